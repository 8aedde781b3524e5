package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a Recorder. Zero values take the defaults.
type Options struct {
	// NullIPSources lists sources whose IP is always stored as null: a
	// relayed request's address is not the actor's. Default slack,
	// workflow, system. Set to an empty non-nil slice for none.
	NullIPSources []string
	// MaxDetailsBytes bounds details once canonicalised. Default 32768.
	MaxDetailsBytes int
	// RetentionDays refuses events older than the retention window.
	// Default 365.
	RetentionDays int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Defaults of Options.
var (
	NullIPSourcesDefault = []string{"slack", "workflow", "system"}
)

// MaxDetailsBytesDefault is the default of Options.MaxDetailsBytes.
const MaxDetailsBytesDefault = 32768

// Recorder validates, normalises and writes events into audit_outbox.
type Recorder struct {
	opts   Options
	nullIP map[string]bool
}

// New returns a Recorder with opts, defaults applied and validated.
func New(opts Options) (*Recorder, error) {
	if opts.NullIPSources == nil {
		opts.NullIPSources = NullIPSourcesDefault
	}
	if opts.MaxDetailsBytes == 0 {
		opts.MaxDetailsBytes = MaxDetailsBytesDefault
	}
	if opts.MaxDetailsBytes < 2 {
		return nil, fmt.Errorf("outbox: MaxDetailsBytes must be at least 2, got %d", opts.MaxDetailsBytes)
	}
	if opts.RetentionDays == 0 {
		opts.RetentionDays = DefaultRetention
	}
	if opts.RetentionDays < 1 {
		return nil, fmt.Errorf("outbox: RetentionDays must be positive, got %d", opts.RetentionDays)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Recorder{opts: opts, nullIP: map[string]bool{}}
	for i, s := range opts.NullIPSources {
		if !ValidSource(s) {
			return nil, fmt.Errorf("outbox: NullIPSources[%d] %q is not a valid source", i, s)
		}
		r.nullIP[s] = true
	}
	return r, nil
}

var defaultRecorder atomic.Pointer[Recorder]

func init() {
	r, _ := New(Options{})
	defaultRecorder.Store(r)
}

// SetDefault installs r as the Recorder behind the package-level Record,
// RecordBatch and Queue.
func SetDefault(r *Recorder) { defaultRecorder.Store(r) }

// Default returns the Recorder behind the package-level functions.
func Default() *Recorder { return defaultRecorder.Load() }

// Record writes one event inside the caller's transaction.
func Record(ctx context.Context, tx pgx.Tx, e Event) error {
	return Default().Record(ctx, tx, e)
}

// RecordBatch writes events inside the caller's transaction with COPY: all
// or none.
func RecordBatch(ctx context.Context, tx pgx.Tx, es []Event) error {
	return Default().RecordBatch(ctx, tx, es)
}

// Validate normalises e as recording would (context merged) without writing
// it, returning the id it would be stored under.
func (r *Recorder) Validate(ctx context.Context, e Event) (string, error) {
	row, err := r.normalise(fromContext(ctx, e), r.opts.Now())
	if err != nil {
		return "", err
	}
	return row.id.String(), nil
}

const insertOutboxSQL = `
INSERT INTO audit_outbox (
    id, workspace_id, occurred_at, recorded_at, action, actor_type, actor_id,
    actor_email, actor_name, resource_type, resource_ids, resource_ids_flat,
    source, ip, user_agent, request_id, details
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`

// outboxColumns are the columns RecordBatch copies, in outboxCols.args
// order.
var outboxColumns = []string{
	"id", "workspace_id", "occurred_at", "recorded_at", "action", "actor_type", "actor_id",
	"actor_email", "actor_name", "resource_type", "resource_ids", "resource_ids_flat",
	"source", "ip", "user_agent", "request_id", "details",
}

// Record writes one event inside tx.
func (r *Recorder) Record(ctx context.Context, tx pgx.Tx, e Event) error {
	if tx == nil {
		return errors.New("outbox: Record needs a transaction")
	}
	w, err := r.normalise(fromContext(ctx, e), r.opts.Now())
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, insertOutboxSQL, newOutboxCols().load(&w)...); err != nil {
		return fmt.Errorf("writing audit event to outbox: %w", err)
	}
	return nil
}

// RecordBatch writes es inside tx with one COPY: all or none. A validation
// error carries the event's index (events[7] ...); nothing is written unless
// every event is valid, and tx stays usable either way.
func (r *Recorder) RecordBatch(ctx context.Context, tx pgx.Tx, es []Event) error {
	_, err := r.recordBatch(ctx, tx, es, false)
	return err
}

// RecordBatchIDs is RecordBatch returning the stored ids in input order.
func (r *Recorder) RecordBatchIDs(ctx context.Context, tx pgx.Tx, es []Event) ([]string, error) {
	return r.recordBatch(ctx, tx, es, true)
}

// streamMin is the smallest batch normalised while it is copied. Below it,
// the savepoint's two round trips cost more than the overlap saves.
const streamMin = 256

// savepointRollbackTimeout bounds rolling back to the savepoint of a failed
// copy, which runs even when ctx is already cancelled.
const savepointRollbackTimeout = 5 * time.Second

// recordBatch normalises and copies es. A small batch is normalised first,
// then copied. A large one is normalised as pgx reads it for the COPY: pgx
// encodes the rows in a goroutine of its own while the server stores the
// rows already sent, so normalising overlaps the insert rather than holding
// the database idle until it is done. An invalid event then fails the copy
// midway; the copy runs under a savepoint, rolled back on any failure, so
// the caller's transaction is left as it was.
func (r *Recorder) recordBatch(ctx context.Context, tx pgx.Tx, es []Event, wantIDs bool) ([]string, error) {
	if tx == nil {
		return nil, errors.New("outbox: RecordBatch needs a transaction")
	}
	if len(es) == 0 {
		return nil, nil
	}
	src := &batchSource{r: r, cx: contextOf(ctx), es: es, now: r.opts.Now(), i: -1, cols: newOutboxCols()}
	if wantIDs {
		src.ids = make([]string, 0, len(es))
	}
	var err error
	if len(es) < streamMin {
		err = r.copyNormalised(ctx, tx, src)
	} else {
		err = r.copyStreaming(ctx, tx, src)
	}
	if err != nil {
		return nil, err
	}
	return src.ids, nil
}

// copyNormalised normalises every event of src, then copies them.
func (r *Recorder) copyNormalised(ctx context.Context, tx pgx.Tx, src *batchSource) error {
	rows := make([]row, 0, len(src.es))
	for src.Next() {
		rows = append(rows, src.w)
	}
	if src.err != nil {
		return src.err
	}
	return copyRows(ctx, tx, newRowSource(rows), len(rows))
}

// copyStreaming copies src, normalising as it goes, under a savepoint.
func (r *Recorder) copyStreaming(ctx context.Context, tx pgx.Tx, src *batchSource) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("starting a savepoint for %d audit events: %w", len(src.es), err)
	}
	err = copyRows(ctx, sp, src, len(src.es))
	if src.err != nil {
		err = src.err // the copy failed because this event is invalid
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), savepointRollbackTimeout)
		defer cancel()
		if rerr := sp.Rollback(rctx); rerr != nil {
			return fmt.Errorf("%w; rolling back to the savepoint: %w", err, rerr)
		}
		return err
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("releasing the savepoint of %d audit events: %w", len(src.es), err)
	}
	return nil
}

// copyRows copies want rows from src into audit_outbox.
func copyRows(ctx context.Context, tx pgx.Tx, src pgx.CopyFromSource, want int) error {
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_outbox"}, outboxColumns, src)
	if err != nil {
		return fmt.Errorf("copying %d audit events to outbox: %w", want, err)
	}
	if int(n) != want {
		return fmt.Errorf("copying audit events to outbox: wrote %d of %d", n, want)
	}
	return nil
}

// batchSource normalises a batch's events one by one, in order, as a
// pgx.CopyFromSource. It stops at the first invalid event, whose error
// (with its index) is err; ids collects the ids of the events normalised
// when not nil.
type batchSource struct {
	r    *Recorder
	cx   auditContext // the context's values, looked up once for the batch
	es   []Event
	now  time.Time
	i    int
	w    row // the current event, normalised
	cols *outboxCols
	ids  []string
	err  error
}

var _ pgx.CopyFromSource = (*batchSource)(nil)

// Next implements pgx.CopyFromSource: it normalises the next event.
func (s *batchSource) Next() bool {
	if s.err != nil || s.i+1 >= len(s.es) {
		return false
	}
	s.i++
	w, err := s.r.normalise(s.cx.fill(s.es[s.i]), s.now)
	if err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			ve.Index = s.i
		}
		s.err = err
		return false
	}
	s.w = w
	if s.ids != nil {
		s.ids = append(s.ids, w.id.String())
	}
	return true
}

// Values implements pgx.CopyFromSource.
func (s *batchSource) Values() ([]any, error) { return s.cols.load(&s.w), nil }

// Err implements pgx.CopyFromSource.
func (s *batchSource) Err() error { return s.err }
