package partitions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// boundLayout formats a partition bound as a timestamptz literal; times are
// in UTC, so the offset prints as +00.
const boundLayout = "2006-01-02 15:04:05-07"

// floor returns the start of the interval holding t, in UTC.
func (m *Maintainer) floor(t time.Time) time.Time {
	t = t.UTC()
	if m.interval == IntervalDay {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// next returns the start of the interval after the one starting at start.
func (m *Maintainer) next(start time.Time) time.Time {
	if m.interval == IntervalDay {
		return start.AddDate(0, 0, 1)
	}
	return start.AddDate(0, 1, 0)
}

// window returns the range Ensure covers at now: from the interval holding
// now - RetentionDays to the end of the Premake-th interval after now's.
func (m *Maintainer) window(now time.Time) (from, to time.Time) {
	from = m.floor(m.cutoff(now))
	to = m.next(m.floor(now))
	for range m.premake {
		to = m.next(to)
	}
	return from, to
}

// cutoff returns the oldest instant still within retention at now.
func (m *Maintainer) cutoff(now time.Time) time.Time {
	return now.UTC().AddDate(0, 0, -m.retention)
}

// partitionName names the partition whose lower bound is from:
// audit_events_p20261101. A bound off midnight (only possible for a gap
// next to a partition someone made by hand) adds the time of day.
func partitionName(from time.Time) string {
	from = from.UTC()
	name := namePrefix + from.Format("20060102")
	if !from.Equal(time.Date(from.Year(), from.Month(), from.Day(), 0, 0, 0, 0, time.UTC)) {
		name += from.Format("_150405")
	}
	return name
}

// span is a half-open time range [from, to).
type span struct{ from, to time.Time }

// gaps returns the parts of [from, to) that no partition in parts covers.
// parts must be ordered by lower bound with MINVALUE first, as List orders
// them. The DEFAULT partition covers nothing: a range partition may still be
// created beside it.
func gaps(from, to time.Time, parts []Partition) []span {
	var out []span
	cur := from
	for _, p := range parts {
		if p.isDefault() {
			continue
		}
		// Skip partitions wholly before cur or wholly after to.
		if !p.To.IsZero() && !p.To.After(cur) {
			continue
		}
		if !p.From.IsZero() && !p.From.Before(to) {
			break
		}
		if !p.From.IsZero() && p.From.After(cur) {
			out = append(out, span{cur, p.From})
		}
		if p.To.IsZero() {
			return out // MAXVALUE: covers the rest
		}
		cur = p.To
		if !cur.Before(to) {
			return out
		}
	}
	if cur.Before(to) {
		out = append(out, span{cur, to})
	}
	return out
}

// state is what one maintenance transaction knows about the partitions.
type state struct {
	schema string
	parts  []Partition // ordered by lower bound, MINVALUE first
}

func loadState(ctx context.Context, tx pgx.Tx) (*state, error) {
	st := &state{}
	if err := tx.QueryRow(ctx, parentSchemaSQL, parentTable).Scan(&st.schema); err != nil {
		return nil, fmt.Errorf("looking up the schema of %s: %w", parentTable, err)
	}
	parts, err := listPartitions(ctx, tx)
	if err != nil {
		return nil, err
	}
	st.parts = parts
	return st, nil
}

func (st *state) add(p Partition) {
	i, _ := slices.BinarySearchFunc(st.parts, p.From, func(q Partition, t time.Time) int {
		if q.isDefault() || q.From.IsZero() {
			return -1
		}
		return q.From.Compare(t)
	})
	st.parts = slices.Insert(st.parts, i, p)
}

func (st *state) remove(name string) {
	st.parts = slices.DeleteFunc(st.parts, func(p Partition) bool { return p.Name == name })
}

// ddlPerTransactionDefault is how many partitions one maintenance
// transaction creates or drops before it commits and goes on in a new one.
// Each CREATE takes locks on the new table and its indexes until commit;
// a first run of a long daily window in one transaction would hold audit_events
// locked for its whole length and could exhaust the lock table
// (max_locks_per_transaction).
const ddlPerTransactionDefault = 32

// begin starts a maintenance transaction with a short lock_timeout and the
// maintenance lock. With wait false it only tries the lock and, when another
// instance holds it, returns ok false and no error.
func (m *Maintainer) begin(ctx context.Context, wait bool) (tx pgx.Tx, ok bool, err error) {
	tx, err = m.pool.Begin(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("beginning partition maintenance: %w", err)
	}
	fail := func(what string, err error) (pgx.Tx, bool, error) {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	ms := strconv.FormatInt(m.lockTimeout.Milliseconds(), 10)
	if _, err := tx.Exec(ctx, setLockTimeoutSQL, ms); err != nil {
		return fail("setting lock_timeout", err)
	}
	if wait {
		if _, err := tx.Exec(ctx, lockSQL, LockKey); err != nil {
			return fail("waiting for the partition maintenance lock", err)
		}
		return tx, true, nil
	}
	var got bool
	if err := tx.QueryRow(ctx, tryLockSQL, LockKey).Scan(&got); err != nil {
		return fail("taking the partition maintenance lock", err)
	}
	if !got {
		_ = tx.Rollback(ctx)
		m.logger.DebugContext(ctx, "partitions: maintenance lock held by another instance; skipping run")
		return nil, false, nil
	}
	return tx, true, nil
}

// run is one maintenance run: a transaction holding the maintenance lock
// and what it knows of the partitions. Every ddlPerTransaction changes it
// commits and continues in a new transaction (checkpoint).
type run struct {
	m  *Maintainer
	tx pgx.Tx
	st *state
	// created and dropped are committed; pendingCreated and pendingDropped
	// are done in the open transaction.
	created, dropped               []string
	pendingCreated, pendingDropped []string
	// lost is set when a checkpoint found the lock taken by another
	// instance; the run stops there without error.
	lost bool
}

// startRun begins a run; ok is false, with no error, when wait is false and
// another instance holds the lock.
func (m *Maintainer) startRun(ctx context.Context, wait bool) (r *run, ok bool, err error) {
	tx, ok, err := m.begin(ctx, wait)
	if err != nil || !ok {
		return nil, ok, err
	}
	st, err := loadState(ctx, tx)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, false, err
	}
	return &run{m: m, tx: tx, st: st}, true, nil
}

// commit commits the open transaction and, once it is durable, counts its
// changes in the metrics.
func (r *run) commit(ctx context.Context) error {
	tx := r.tx
	r.tx = nil
	if err := tx.Commit(ctx); err != nil {
		r.pendingCreated, r.pendingDropped = nil, nil
		return fmt.Errorf("committing partition maintenance: %w", err)
	}
	r.m.metrics.created.Add(float64(len(r.pendingCreated)))
	r.m.metrics.dropped.Add(float64(len(r.pendingDropped)))
	r.m.metrics.observe(r.st.parts)
	r.created = append(r.created, r.pendingCreated...)
	r.dropped = append(r.dropped, r.pendingDropped...)
	r.pendingCreated, r.pendingDropped = nil, nil
	return nil
}

// checkpoint commits once the open transaction has made ddlPerTransaction
// changes and carries on in a new one, re-taking the lock without waiting:
// if another instance took it in between, that instance carries on, and
// this run stops with lost set.
func (r *run) checkpoint(ctx context.Context) error {
	if len(r.pendingCreated)+len(r.pendingDropped) < r.m.ddlPerTransaction {
		return nil
	}
	return r.restart(ctx)
}

// restart commits the open transaction and carries on in a new one, as
// checkpoint describes; prune also calls it before each drop with
// BeforeDrop.
func (r *run) restart(ctx context.Context) error {
	if err := r.commit(ctx); err != nil {
		return fmt.Errorf("%w: %w", errTxBroken, err)
	}
	r.m.logger.DebugContext(ctx, "partitions: committed a batch; continuing in a new transaction",
		"created", len(r.created), "dropped", len(r.dropped))
	tx, ok, err := r.m.begin(ctx, false)
	if err != nil {
		return fmt.Errorf("%w: %w", errTxBroken, err)
	}
	if !ok {
		r.lost = true
		return nil
	}
	st, err := loadState(ctx, tx)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return fmt.Errorf("%w: %w", errTxBroken, err)
	}
	r.tx, r.st = tx, st
	return nil
}

// finish commits what is pending, or rolls back after an error that left
// the transaction unusable; it is safe to call more than once.
func (r *run) finish(ctx context.Context) error {
	if r.tx == nil {
		return nil
	}
	return r.commit(ctx)
}

// rollback ends the open transaction, if any, discarding what is pending.
func (r *run) rollback(ctx context.Context) {
	if r.tx != nil {
		_ = r.tx.Rollback(context.WithoutCancel(ctx))
		r.tx = nil
	}
}

// errTxBroken marks a failure that left the transaction unusable.
var errTxBroken = errors.New("maintenance transaction aborted")

// stops reports whether err should end a run rather than be collected: a
// lock timeout (the next partition would only wait as long again, holding
// up the relay and readers once more), a cancelled context or a broken
// transaction.
func stops(ctx context.Context, err error) bool {
	return isLockTimeout(err) || ctx.Err() != nil || errors.Is(err, errTxBroken)
}

// Ensure creates every missing partition from the interval holding
// now - RetentionDays to Premake intervals after the current one, and
// returns the names created. A range already covered, even by partitions of
// another interval, is left as it is; a range partly covered gets a
// partition for each uncovered part. A partition that cannot be created is
// reported in err without stopping the others, and created lists what was
// created even then. When another instance holds the maintenance lock,
// Ensure does nothing and returns no error.
func (m *Maintainer) Ensure(ctx context.Context) (created []string, err error) {
	r, ok, err := m.startRun(ctx, false)
	if err != nil || !ok {
		m.countError(err)
		return nil, err
	}
	defer r.rollback(ctx)
	runErr := r.ensure(ctx, m.now())
	err = errors.Join(runErr, r.finish(ctx))
	m.countError(err)
	return r.created, err
}

func (m *Maintainer) countError(err error) {
	if err != nil {
		m.metrics.errors.Inc()
	}
}

// ensure creates the missing partitions of the window at now. It returns
// the failures of single partitions joined, and stops early only for the
// reasons of stops.
func (r *run) ensure(ctx context.Context, now time.Time) error {
	var errs []error
	from, to := r.m.window(now)
	for lo := from; lo.Before(to) && !r.lost; lo = r.m.next(lo) {
		hi := r.m.next(lo)
		for _, g := range gaps(lo, hi, r.st.parts) {
			if !g.from.Equal(lo) || !g.to.Equal(hi) {
				r.m.logger.InfoContext(ctx, "partitions: range partly covered by existing partitions; creating the rest",
					"range_from", lo, "range_to", hi, "gap_from", g.from, "gap_to", g.to)
			}
			name, err := r.create(ctx, g)
			if err == nil {
				r.pendingCreated = append(r.pendingCreated, name)
				err = r.checkpoint(ctx)
			}
			if err != nil {
				errs = append(errs, err)
				if stops(ctx, err) {
					return errors.Join(errs...)
				}
			}
			if r.lost {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// create makes the partition for g inside a savepoint, so a failure undoes
// only this partition.
func (r *run) create(ctx context.Context, g span) (string, error) {
	name := partitionName(g.from)
	what := fmt.Sprintf("creating partition %s [%s, %s)", name,
		g.from.Format(time.RFC3339), g.to.Format(time.RFC3339))

	sp, err := r.tx.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("%s: %w: %w", what, errTxBroken, err)
	}
	err = func() error {
		var exists bool
		if err := sp.QueryRow(ctx, relationExistsSQL, r.st.schema, name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return errors.New("a table of that name exists but does not cover the range")
		}
		sql := fmt.Sprintf(createPartitionSQL,
			pgx.Identifier{r.st.schema, name}.Sanitize(),
			pgx.Identifier{r.st.schema, parentTable}.Sanitize(),
			g.from.Format(boundLayout), g.to.Format(boundLayout))
		if _, err := sp.Exec(ctx, sql); err != nil {
			return err
		}
		_, err := sp.Exec(ctx, fmt.Sprintf(createActorStatisticsSQL,
			pgx.Identifier{r.st.schema, name + actorStatisticsSuffix}.Sanitize(),
			pgx.Identifier{r.st.schema, name}.Sanitize()))
		return err
	}()
	if err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return "", fmt.Errorf("%s: %w: %w (rolling back savepoint: %w)", what, errTxBroken, err, rbErr)
		}
		r.m.logger.WarnContext(ctx, "partitions: could not create partition",
			"partition", name, "from", g.from, "to", g.to, "error", err)
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if err := sp.Commit(ctx); err != nil {
		return "", fmt.Errorf("%s: %w: %w", what, errTxBroken, err)
	}
	r.st.add(Partition{
		Name:  name,
		From:  g.from,
		To:    g.to,
		Bound: fmt.Sprintf("FOR VALUES FROM ('%s') TO ('%s')", g.from.Format(boundLayout), g.to.Format(boundLayout)),
		Rows:  -1,
	})
	r.m.logger.InfoContext(ctx, "partitions: created partition", "partition", name, "from", g.from, "to", g.to)
	return name, nil
}

// EnsureFor makes sure a partition holds t and returns its name, creating
// the partition of t's interval if none does (or, when partitions of
// another interval cover part of that range, the uncovered part holding
// t). The relay calls it when an insert found no partition,
// after rolling that transaction back: the failed transaction's lock on
// audit_events would otherwise block the CREATE until lock_timeout.
//
// Unlike the scheduled runs EnsureFor waits for the maintenance lock (up to
// LockTimeout), since its caller needs the partition.
func (m *Maintainer) EnsureFor(ctx context.Context, t time.Time) (string, error) {
	t = t.UTC()
	r, _, err := m.startRun(ctx, true)
	if err != nil {
		m.countError(err)
		return "", fmt.Errorf("ensuring the partition for %s: %w", t.Format(time.RFC3339Nano), err)
	}
	defer r.rollback(ctx)

	for _, p := range r.st.parts {
		if p.contains(t) {
			return p.Name, nil
		}
	}
	lo := m.floor(t)
	for _, g := range gaps(lo, m.next(lo), r.st.parts) {
		if t.Before(g.from) || !t.Before(g.to) {
			continue
		}
		name, err := r.create(ctx, g)
		if err == nil {
			r.pendingCreated = append(r.pendingCreated, name)
			err = r.finish(ctx)
		}
		m.countError(err)
		if err != nil {
			return "", err
		}
		return name, nil
	}
	// Unreachable: t is in [lo, next(lo)) and no partition holds it, so
	// some gap does.
	return "", fmt.Errorf("ensuring the partition for %s: no uncovered range found", t.Format(time.RFC3339Nano))
}

// Prune drops every partition whose upper bound is at or before
// now - RetentionDays, so only wholly expired partitions go, and returns
// their names. With dryRun it only reports what it would drop. A partition
// that cannot be dropped is reported in err without stopping the others,
// and dropped lists what was dropped even then. When another instance holds
// the maintenance lock, Prune does nothing and returns no error.
func (m *Maintainer) Prune(ctx context.Context, dryRun bool) (dropped []string, err error) {
	if dryRun {
		parts, err := m.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range m.expired(parts, m.now()) {
			dropped = append(dropped, p.Name)
		}
		return dropped, nil
	}

	r, ok, err := m.startRun(ctx, false)
	if err != nil || !ok {
		m.countError(err)
		return nil, err
	}
	defer r.rollback(ctx)
	runErr := r.prune(ctx, m.now())
	err = errors.Join(runErr, r.finish(ctx))
	m.countError(err)
	return r.dropped, err
}

// expired returns the partitions wholly before the retention window.
func (m *Maintainer) expired(parts []Partition, now time.Time) []Partition {
	cutoff := m.cutoff(now)
	var out []Partition
	for _, p := range parts {
		if !p.isDefault() && !p.To.IsZero() && !p.To.After(cutoff) {
			out = append(out, p)
		}
	}
	return out
}

// prune drops the expired partitions, like ensure for errors.
func (r *run) prune(ctx context.Context, now time.Time) error {
	var errs []error
	for _, p := range r.m.expired(r.st.parts, now) {
		if r.lost {
			break
		}
		if r.m.beforeDrop != nil && len(r.pendingCreated)+len(r.pendingDropped) > 0 {
			// Commit what the run did so far first: BeforeDrop reads a whole
			// partition, for seconds when it is large, and a DROP holds an
			// ACCESS EXCLUSIVE lock on audit_events until commit, so every
			// reader would wait meanwhile (a CREATE's locks likewise).
			if err := r.restart(ctx); err != nil {
				errs = append(errs, err)
				break
			}
			if r.lost {
				break
			}
		}
		if !slices.ContainsFunc(r.st.parts, func(q Partition) bool { return q.Name == p.Name }) {
			continue // gone since a checkpoint reloaded the state
		}
		err := r.drop(ctx, p)
		if err == nil {
			r.pendingDropped = append(r.pendingDropped, p.Name)
			err = r.checkpoint(ctx)
		}
		if err != nil {
			errs = append(errs, err)
			if stops(ctx, err) {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// drop drops partition p inside a savepoint.
func (r *run) drop(ctx context.Context, p Partition) error {
	what := fmt.Sprintf("dropping partition %s", p.Name)
	sp, err := r.tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", what, errTxBroken, err)
	}
	if r.m.beforeDrop != nil {
		var underLock func(context.Context) error
		underLock, err = r.m.beforeDrop(ctx, sp, p.From, p.To)
		if err == nil {
			_, err = sp.Exec(ctx, fmt.Sprintf(lockInsertsSQL, pgx.Identifier{r.st.schema, parentTable}.Sanitize()))
		}
		if err == nil && underLock != nil {
			err = underLock(ctx)
		}
	}
	if err == nil {
		_, err = sp.Exec(ctx, fmt.Sprintf(dropPartitionSQL, pgx.Identifier{r.st.schema, p.Name}.Sanitize()))
	}
	if err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return fmt.Errorf("%s: %w: %w (rolling back savepoint: %w)", what, errTxBroken, err, rbErr)
		}
		r.m.logger.WarnContext(ctx, "partitions: could not drop partition", "partition", p.Name, "error", err)
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("%s: %w: %w", what, errTxBroken, err)
	}
	r.st.remove(p.Name)
	r.m.logger.InfoContext(ctx, "partitions: dropped expired partition",
		"partition", p.Name, "from", p.From, "to", p.To, "approx_rows", p.Rows, "bytes", p.Bytes)
	return nil
}

// RunOnce runs Ensure then Prune under the maintenance lock and reports
// whether it ran: false, with no error, when another instance holds the
// lock. Prune is skipped when Ensure stopped on a lock timeout. The
// scheduler calls it; so can a CLI.
func (m *Maintainer) RunOnce(ctx context.Context) (ran bool, err error) {
	start := time.Now()
	r, ok, err := m.startRun(ctx, false)
	if err != nil || !ok {
		m.countError(err)
		return false, err
	}
	defer r.rollback(ctx)

	now := m.now()
	ensureErr := r.ensure(ctx, now)
	var pruneErr error
	if !stops(ctx, ensureErr) && !r.lost {
		pruneErr = r.prune(ctx, now)
	}
	err = errors.Join(ensureErr, pruneErr, r.finish(ctx))
	m.countError(err)
	m.logger.InfoContext(ctx, "partitions: maintenance run done",
		"created", len(r.created), "dropped", len(r.dropped), "partitions", len(r.st.parts),
		"duration_ms", time.Since(start).Milliseconds())
	return true, err
}
