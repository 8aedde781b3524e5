package outbox

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
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

// Record writes one event inside tx. In a Tx (Begin, BeginFunc) the INSERT
// goes with the COMMIT; in any other pgx.Tx it is sent at once.
func (r *Recorder) Record(ctx context.Context, tx pgx.Tx, e Event) error {
	if tx == nil {
		return errors.New("outbox: Record needs a transaction")
	}
	w, err := r.normalise(fromContext(ctx, e), r.opts.Now())
	if err != nil {
		return err
	}
	if t, ok := tx.(*Tx); ok && t.keeps() {
		t.keep(&w)
		return nil
	}
	if _, err := tx.Exec(ctx, insertOutboxSQL, newOutboxCols().load(&w)...); err != nil {
		return fmt.Errorf("writing audit event to outbox: %w", err)
	}
	return nil
}

// RecordBatch validates every event first, then writes them all with one
// COPY inside tx. A validation error carries the event's index; nothing is
// written unless every event is valid.
func (r *Recorder) RecordBatch(ctx context.Context, tx pgx.Tx, es []Event) error {
	_, err := r.recordBatch(ctx, tx, es, false)
	return err
}

// RecordBatchIDs is RecordBatch returning the stored ids in input order.
func (r *Recorder) RecordBatchIDs(ctx context.Context, tx pgx.Tx, es []Event) ([]string, error) {
	return r.recordBatch(ctx, tx, es, true)
}

func (r *Recorder) recordBatch(ctx context.Context, tx pgx.Tx, es []Event, wantIDs bool) ([]string, error) {
	if tx == nil {
		return nil, errors.New("outbox: RecordBatch needs a transaction")
	}
	if len(es) == 0 {
		return nil, nil
	}
	rows, err := r.normaliseAll(ctx, es)
	if err != nil {
		return nil, err
	}
	n, err := copyRows(ctx, tx, rows)
	if err != nil {
		return nil, fmt.Errorf("copying %d audit events to outbox: %w", len(es), err)
	}
	if int(n) != len(es) {
		return nil, fmt.Errorf("copying audit events to outbox: wrote %d of %d", n, len(es))
	}
	if !wantIDs {
		return nil, nil
	}
	ids := make([]string, len(rows))
	for i := range rows {
		ids[i] = rows[i].id.String()
	}
	return ids, nil
}

// parallelChunk is the fewest events a normalising goroutine is given: below
// it the goroutine costs more than it saves.
const parallelChunk = 256

// normaliseAll normalises every event before anything is written, and
// returns the error of the first invalid event (by index), as a sequential
// loop would. The database is idle while this runs, so large batches are
// split across the available CPUs: on the bench machine normalising took a
// third of RecordBatch's time, single-threaded, before the COPY could start.
func (r *Recorder) normaliseAll(ctx context.Context, es []Event) ([]row, error) {
	// The recording time, its occurred_at window and the context's values
	// are the same for every event: work them out once.
	rt := r.recordTime(r.opts.Now())
	cx := contextOf(ctx)
	rows := make([]row, len(es))
	// The values behind the rows' pointer fields, for the whole batch in
	// one allocation rather than some per event.
	texts := make([]rowText, len(es))
	// run normalises es[lo:hi] and returns the first error there. Each
	// goroutine reuses one scratch for all its events.
	run := func(lo, hi int) error {
		sc := getScratch()
		defer putScratch(sc)
		for i := lo; i < hi; i++ {
			e := cx.fill(es[i])
			if err := r.normaliseTo(&rows[i], &texts[i], sc, &e, rt); err != nil {
				var ve *ValidationError
				if errors.As(err, &ve) {
					ve.Index = i
				}
				return err
			}
		}
		return nil
	}
	workers := min(runtime.GOMAXPROCS(0), len(es)/parallelChunk)
	if workers < 2 {
		return rows, run(0, len(es))
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := len(es)*w/workers, len(es)*(w+1)/workers
		wg.Go(func() { errs[w] = run(lo, hi) })
	}
	wg.Wait()
	// Ranges are in index order: the first error found is the first
	// invalid event.
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return rows, nil
}
