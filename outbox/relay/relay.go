package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults and limits of Config.
const (
	// BatchSizeDefault is the default of Config.BatchSize.
	BatchSizeDefault = 1000
	// BatchSizeMax bounds Config.BatchSize: one move is one transaction
	// holding the seq counter, which every other relay waits for.
	BatchSizeMax = 100_000
	// PollIntervalDefault is the default of Config.PollInterval.
	PollIntervalDefault = 200 * time.Millisecond
	// PollIntervalMin bounds Config.PollInterval from below.
	PollIntervalMin = time.Millisecond
)

// Backoff after a failed move: doubling from backoffMin up to backoffMax.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
)

// PartitionEnsurer creates the audit_events partition holding an instant.
// app/partitions' *Maintainer implements it.
type PartitionEnsurer interface {
	// EnsureFor makes sure a partition holds t and returns its name.
	EnsureFor(ctx context.Context, t time.Time) (string, error)
}

// Config configures a Relay. Zero values take the defaults.
type Config struct {
	// BatchSize is the most outbox rows moved in one transaction.
	// Default 1000; at most BatchSizeMax.
	BatchSize int
	// PollInterval is how long the relay waits after a partial batch before
	// looking again, unless Wake is called sooner. Default 200ms; at least
	// 1ms.
	PollInterval time.Duration
	// Partitions creates a missing audit_events partition when an event's
	// occurred_at has none. Optional: without it such an event goes to the
	// dead letters.
	Partitions PartitionEnsurer
	// Logger receives the relay's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, receives the relay's metrics (see the package
	// doc). Optional.
	Registerer prometheus.Registerer
	// WithoutChain stores events without prev_hash and hash, by the same
	// move less the heads, the hashing and the links. It exists for
	// `auditlog bench pipeline` to measure what the hash chain costs; events
	// stored so are outside every chain and break verification. Never set
	// it in production (no configuration key does). Default: false.
	WithoutChain bool
}

// withDefaults returns c with defaults applied, or an error naming the
// first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.BatchSize == 0 {
		c.BatchSize = BatchSizeDefault
	}
	if c.BatchSize < 1 || c.BatchSize > BatchSizeMax {
		return c, fmt.Errorf("relay: BatchSize must be between 1 and %d, got %d", BatchSizeMax, c.BatchSize)
	}
	if c.PollInterval == 0 {
		c.PollInterval = PollIntervalDefault
	}
	if c.PollInterval < PollIntervalMin {
		return c, fmt.Errorf("relay: PollInterval must be at least %s, got %s", PollIntervalMin, c.PollInterval)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Stats are a Relay's counters since New.
type Stats struct {
	// Batches is the number of move transactions committed.
	Batches uint64
	// Moved is the number of outbox rows moved into audit_events,
	// duplicates included.
	Moved uint64
	// Duplicates is the number of moved rows whose event was already
	// stored (or repeated within the batch), so stored once.
	Duplicates uint64
	// DeadLettered is the number of rows set aside in audit_dead_letters.
	DeadLettered uint64
	// Errors is the number of failed move attempts (retried later).
	Errors uint64
	// Conflicts is the number of moves rolled back because another
	// relay's move committed while they were in flight (see the package
	// doc); their rows moved again at once. Frequent conflicts mean
	// several relays compete for one outbox.
	Conflicts uint64
	// GaveWay is the number of moves launched ahead (see the package doc)
	// rolled back because a lock got in their way: a DDL statement queued
	// on the relay's tables, or the move before them waiting for a lock.
	// Their rows moved again at once.
	GaveWay uint64
	// LastSeq is the highest seq reserved by this relay's last committed
	// move, or 0.
	LastSeq int64
}

// Relay moves events from audit_outbox to audit_events. Create it with New.
type Relay struct {
	pool *pgxpool.Pool
	cfg  Config
	// maxConns is the pool's size: a pipeline needs two connections.
	maxConns int32
	log      *slog.Logger
	metrics  *metrics // nil without Config.Registerer

	// wake holds at most one pending nudge, so Wake never blocks and
	// nudges during a batch coalesce into one more poll.
	wake chan struct{}

	mu  sync.Mutex
	run *runState // the running loop, nil when stopped

	batches, moved, duplicates, deadLettered, errors, conflicts, gaveWay atomic.Uint64
	lastSeq                                                              atomic.Int64
	// lastCopy is how long the last completed copy took, in nanoseconds
	// (stallLimit).
	lastCopy atomic.Int64

	// claimFrom is the claim cursor: the last pos of the previous full
	// batch while a backlog drains, 0 to claim from the head. See
	// advanceCursor.
	claimFrom atomic.Int64
	// cursorMoves counts the moves claimed from the cursor since the last
	// claim from the head.
	cursorMoves atomic.Int64
	// pauseUntil is when (Unix nanoseconds) the relay may again launch a
	// move while another is in flight; set after a conflict
	// (conflictPause).
	pauseUntil atomic.Int64

	// hooks lets tests observe and interfere with moves; zero in production.
	hooks testHooks
}

// testHooks are called by the move transaction when set.
type testHooks struct {
	// beforeCommit runs after the move statement, before COMMIT; an error
	// aborts the move.
	beforeCommit func(ctx context.Context, tx pgx.Tx, b moveResult) error
	// afterCommit runs once a move has committed.
	afterCommit func(b moveResult)
	// launched runs once a move has started copying; following tells
	// whether it went on from a move still in flight.
	launched func(b moveResult, following bool)
}

// runState is one run of the loop, from Start until it exits.
type runState struct {
	stop     chan struct{} // closed by Stop: finish the batch in flight, then exit
	stopOnce sync.Once
	cancel   context.CancelFunc // aborts the batch in flight
	done     chan struct{}      // closed when the loop has exited
}

// New returns a Relay moving rows with pool, cfg validated and defaulted.
func New(pool *pgxpool.Pool, cfg Config) (*Relay, error) {
	if pool == nil {
		return nil, errors.New("relay: pool is nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Relay{
		pool:     pool,
		cfg:      cfg,
		maxConns: pool.Config().MaxConns,
		log:      cfg.Logger,
		wake:     make(chan struct{}, 1),
	}
	if cfg.Registerer != nil {
		m, err := newMetrics(cfg.Registerer, pool, cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("relay: registering metrics with Registerer: %w", err)
		}
		r.metrics = m
	}
	return r, nil
}

// Start runs the relay loop in a goroutine until Stop is called or ctx is
// done. Cancelling ctx aborts the batch in flight (it is rolled back and
// moved later); Stop lets it finish. A stopped Relay may be started again.
func (r *Relay) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("relay: starting: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.run != nil {
		return errors.New("relay: already started")
	}
	runCtx, cancel := context.WithCancel(ctx)
	st := &runState{stop: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	r.run = st
	go r.loop(runCtx, st)
	r.log.Info("relay: started", "batch_size", r.cfg.BatchSize, "poll_interval", r.cfg.PollInterval)
	return nil
}

// Stop asks the loop to exit after the move in flight and waits for it; of
// two moves in flight, the older commits and the newer is rolled back. If
// ctx ends first, the moves in flight are aborted (rolled back, so nothing
// is lost), and Stop returns ctx's error once the loop has exited. Stop on a
// Relay that is not running returns nil.
func (r *Relay) Stop(ctx context.Context) error {
	r.mu.Lock()
	st := r.run
	r.mu.Unlock()
	if st == nil {
		return nil
	}
	st.stopOnce.Do(func() { close(st.stop) })
	var err error
	select {
	case <-st.done:
	case <-ctx.Done():
		st.cancel()
		<-st.done
		err = fmt.Errorf("relay: stopping: %w", ctx.Err())
	}
	st.cancel()
	return err
}

// Wake nudges the loop to look at the outbox now instead of at the end of
// its poll interval. It never blocks; calls while a batch is in flight
// coalesce into one more look.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{
		Batches:      r.batches.Load(),
		Moved:        r.moved.Load(),
		Duplicates:   r.duplicates.Load(),
		DeadLettered: r.deadLettered.Load(),
		Errors:       r.errors.Load(),
		Conflicts:    r.conflicts.Load(),
		GaveWay:      r.gaveWay.Load(),
		LastSeq:      r.lastSeq.Load(),
	}
}

// rescanEvery bounds how many moves in a row claim from the cursor before
// one claims from the head again, so that a row committed late under a
// lower pos (or a retried dead letter, which keeps its pos) waits at most
// this many batches during a backlog that never ends.
const rescanEvery = 64

// advanceCursor sets where the next claim of the head starts, after a move
// of the head that claimed res and returned err.
//
// The claim reads the outbox in pos order. Moved rows leave dead entries in
// its primary key until vacuum, and an index scan only learns to skip them
// once no snapshot anywhere can see them: with a long export or any old
// transaction open, a claim from the head walks every row moved since, and
// a backlog drain slows quadratically (PERFORMANCE.md, "claiming scans dead
// outbox rows"). So after a full batch the next claim starts past its last
// pos. pos order is not commit order, though: a business transaction can
// commit a lower pos after higher ones were moved. Any partial batch (the
// backlog is drained), any failure, and every rescanEvery-th move claim
// from the head again, so such rows are moved, never skipped for good.
func (r *Relay) advanceCursor(res moveResult, err error) {
	full := err == nil && len(res.claimed) >= r.cfg.BatchSize
	if !full || r.cursorMoves.Add(1) >= rescanEvery {
		r.resetCursor()
		return
	}
	r.claimFrom.Store(res.claimed[len(res.claimed)-1])
}

// resetCursor sends the next claim to the head of the outbox: after a move
// failed or was rolled back, its rows may lie behind the cursor.
func (r *Relay) resetCursor() {
	r.claimFrom.Store(0)
	r.cursorMoves.Store(0)
}

// loop is the relay goroutine.
func (r *Relay) loop(ctx context.Context, st *runState) {
	defer func() {
		r.log.Info("relay: stopped")
		r.mu.Lock()
		if r.run == st {
			r.run = nil
		}
		r.mu.Unlock()
		close(st.done)
	}()
	failures := 0
	for {
		select {
		case <-st.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		p, err := r.pipeline(ctx, st.stop)
		if err != nil {
			if ctx.Err() != nil {
				// Cancelled mid-batch: rolled back, nothing to report.
				return
			}
			failures++
			delay := backoff(failures)
			r.log.Error("relay: moving outbox batch failed",
				"error", err, "consecutive_failures", failures, "retry_in", delay)
			if !r.wait(ctx, st, delay, false) {
				return
			}
			continue
		}
		if failures > 0 {
			r.log.Info("relay: recovered", "consecutive_failures", failures)
			failures = 0
		}
		if p.lastClaimed >= r.cfg.BatchSize || p.again {
			continue // more is waiting
		}
		if !r.wait(ctx, st, r.cfg.PollInterval, true) {
			return
		}
	}
}

// wait sleeps for d, or until Wake when wakeable. It reports false when the
// loop must exit.
func (r *Relay) wait(ctx context.Context, st *runState, d time.Duration, wakeable bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	var wake <-chan struct{}
	if wakeable {
		wake = r.wake
	}
	select {
	case <-timer.C:
		return true
	case <-wake:
		return true
	case <-st.stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// backoff returns the delay after the n-th consecutive failure: doubling
// from backoffMin, capped at backoffMax, with jitter so that relays of
// several processes do not retry in step.
func backoff(n int) time.Duration {
	d := backoffMax
	if n <= 6 { // 100ms << 6 = 6.4s, already past the cap
		d = min(backoffMin<<(n-1), backoffMax)
	}
	return d/2 + rand.N(d/2+1)
}
