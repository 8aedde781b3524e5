// Package partitions maintains the partitions of audit_events, which is
// declaratively partitioned by RANGE (occurred_at) with one partition per day
// or per month (retention.partition_interval):
//
//   - Ensure creates every partition from the start of the retention window
//     to Premake intervals after the current one;
//   - EnsureFor creates the partition for one instant, for the relay when an
//     insert found no partition (SQLSTATE 23514 naming no constraint);
//   - Prune drops partitions that lie wholly before the retention window;
//   - RunOnce does Ensure and Prune together, and Start runs it on a cron
//     schedule.
//
// Partitions are named audit_events_pYYYYMMDD after their lower bound, in UTC
// (audit_events_p20261101 holds November 2026 with the month interval). A run
// copes with partitions made with another interval, as after a change of
// configuration: it creates only the parts of each range that no existing
// partition covers.
//
// Several instances may run maintenance at once: each run takes the
// transaction-level advisory lock LockKey and a run that cannot get it is
// skipped, since another instance is doing the same work (EnsureFor waits
// for it instead). DDL runs with a short lock_timeout (Config.LockTimeout)
// because creating or dropping a partition takes an ACCESS EXCLUSIVE lock on
// audit_events until commit, and waiting for it would queue the relay and
// every reader behind, say, a long-running export; a run that times out
// stops and the next one tries again. For the same reason a long run (the
// first one of a daily window) commits every 32 partitions and re-takes the
// advisory lock, so audit_events is never held for the whole run.
//
// One failed partition does not fail the others: its statement runs in a
// savepoint, the run goes on, and the error is returned joined with any
// others alongside the names that were done.
package partitions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/auditlog/auditlog/app/config"
)

// Interval values for Config.Interval.
const (
	IntervalDay   = config.PartitionIntervalDay
	IntervalMonth = config.PartitionIntervalMonth
)

// LockKey is the key of the transaction-level advisory lock
// (pg_advisory_xact_lock(bigint)) that serialises partition maintenance
// across instances: the ASCII bytes of "auditprt".
const LockKey int64 = 0x6175646974707274

// LockTimeoutDefault is Config.LockTimeout's default.
const LockTimeoutDefault = 5 * time.Second

// parentTable is the partitioned table maintained.
const parentTable = "audit_events"

// namePrefix starts every partition name this package creates.
const namePrefix = parentTable + "_p"

// Config configures a Maintainer.
type Config struct {
	// Interval is the span of one partition: "day" or "month".
	// Default: "month".
	Interval string
	// RetentionDays is how many days of events are kept; partitions whose
	// upper bound is at least this old are dropped by Prune. Required, ≥ 1.
	RetentionDays int
	// Premake is how many partitions after the current one Ensure keeps
	// ready (≥ 0). Default: 0.
	Premake int
	// LockTimeout bounds every wait for a lock, on the advisory lock in
	// EnsureFor and on audit_events during DDL. Default: 5s.
	LockTimeout time.Duration
	// Logger receives the maintenance log. Default: slog.Default().
	Logger *slog.Logger
	// Now returns the current time; tests fix it. Default: time.Now.
	Now func() time.Time
	// Registerer, when set, gets the metrics auditlog_partitions,
	// auditlog_partitions_created_total, auditlog_partitions_dropped_total
	// and auditlog_partitions_errors_total. Default: none.
	Registerer prometheus.Registerer
	// BeforeDrop, when set, runs in two steps inside the transaction that
	// drops the partition holding occurred_at in [from, to) (from is zero
	// for an unbounded partition). BeforeDrop itself runs first, while
	// inserts go on: the place for slow work such as reading the whole
	// partition. Then inserts into audit_events are held off until the drop
	// commits (reads go on) and the function it returned, if not nil, runs:
	// it sees every row the drop removes, so it accounts for whatever landed
	// since the first step. An error from either keeps the partition.
	// Integrity uses it to sign bridges over the chain links the drop
	// removes. With BeforeDrop, each drop commits on its own. Default: none.
	BeforeDrop func(ctx context.Context, tx pgx.Tx, from, to time.Time) (underLock func(context.Context) error, err error)
}

// Maintainer creates, drops and lists the partitions of audit_events. Its
// methods are safe for concurrent use.
type Maintainer struct {
	pool        *pgxpool.Pool
	interval    string
	retention   int
	premake     int
	lockTimeout time.Duration
	// ddlPerTransaction is ddlPerTransactionDefault; tests lower it.
	ddlPerTransaction int
	logger            *slog.Logger
	now               func() time.Time
	metrics           metrics
	beforeDrop        func(ctx context.Context, tx pgx.Tx, from, to time.Time) (func(context.Context) error, error)

	mu          sync.Mutex // guards the scheduler fields below
	cron        *cron.Cron
	cancel      context.CancelFunc
	cronStopped <-chan struct{}
	runs        sync.WaitGroup
}

// New returns a Maintainer for the partitions of audit_events in pool's
// database. It checks cfg and names the first bad field.
func New(pool *pgxpool.Pool, cfg Config) (*Maintainer, error) {
	if pool == nil {
		return nil, errors.New("partitions: pool is nil")
	}
	if cfg.Interval == "" {
		cfg.Interval = IntervalMonth
	}
	if cfg.Interval != IntervalDay && cfg.Interval != IntervalMonth {
		return nil, fmt.Errorf(`partitions: Interval must be "day" or "month", got %q`, cfg.Interval)
	}
	if cfg.RetentionDays < 1 {
		return nil, fmt.Errorf("partitions: RetentionDays must be at least 1, got %d", cfg.RetentionDays)
	}
	if cfg.Premake < 0 {
		return nil, fmt.Errorf("partitions: Premake must not be negative, got %d", cfg.Premake)
	}
	if cfg.LockTimeout == 0 {
		cfg.LockTimeout = LockTimeoutDefault
	}
	if cfg.LockTimeout < time.Millisecond {
		return nil, fmt.Errorf("partitions: LockTimeout must be at least 1ms, got %s", cfg.LockTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Maintainer{
		pool:              pool,
		interval:          cfg.Interval,
		retention:         cfg.RetentionDays,
		premake:           cfg.Premake,
		lockTimeout:       cfg.LockTimeout,
		logger:            cfg.Logger,
		ddlPerTransaction: ddlPerTransactionDefault,
		now:               cfg.Now,
		beforeDrop:        cfg.BeforeDrop,
		metrics:           newMetrics(),
	}
	if cfg.Registerer != nil {
		if err := m.metrics.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("partitions: Registerer: %w", err)
		}
	}
	return m, nil
}

// Partition is one partition of audit_events.
type Partition struct {
	// Name is the partition's table name (in audit_events' schema).
	Name string
	// From is the inclusive lower bound in UTC; zero for MINVALUE or the
	// DEFAULT partition.
	From time.Time
	// To is the exclusive upper bound in UTC; zero for MAXVALUE or the
	// DEFAULT partition.
	To time.Time
	// Bound is the bound as PostgreSQL prints it.
	Bound string
	// Rows is PostgreSQL's row estimate (pg_class.reltuples); -1 until the
	// partition is first vacuumed or analysed.
	Rows int64
	// Bytes is the total size on disk, indexes and TOAST included.
	Bytes int64
}

// isDefault reports whether p is the DEFAULT partition (which has no bounds).
func (p Partition) isDefault() bool { return p.Bound == "DEFAULT" }

// contains reports whether t falls within p's bounds.
func (p Partition) contains(t time.Time) bool {
	if p.isDefault() {
		return false
	}
	return (p.From.IsZero() || !t.Before(p.From)) && (p.To.IsZero() || t.Before(p.To))
}

// querier is what List's query needs: the pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// List returns the partitions of audit_events ordered by lower bound.
func (m *Maintainer) List(ctx context.Context) ([]Partition, error) {
	parts, err := listPartitions(ctx, m.pool)
	if err != nil {
		return nil, err
	}
	m.metrics.observe(parts)
	return parts, nil
}

func listPartitions(ctx context.Context, q querier) ([]Partition, error) {
	rows, err := q.Query(ctx, listPartitionsSQL, parentTable)
	if err != nil {
		return nil, fmt.Errorf("listing partitions: %w", err)
	}
	parts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Partition, error) {
		var p Partition
		var from, to *time.Time
		if err := row.Scan(&p.Name, &p.Bound, &from, &to, &p.Rows, &p.Bytes); err != nil {
			return p, err
		}
		if from != nil {
			p.From = from.UTC()
		}
		if to != nil {
			p.To = to.UTC()
		}
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing partitions: %w", err)
	}
	return parts, nil
}

// codeLockNotAvailable is lock_not_available in PostgreSQL's errcodes.txt.
const codeLockNotAvailable = "55P03"

// isLockTimeout reports whether err is a lock_timeout expiry.
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeLockNotAvailable
}
