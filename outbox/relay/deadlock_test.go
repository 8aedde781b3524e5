package relay

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// activitySQL describes this database's backends other than the caller:
// state, wait event and the start of the query, one line each.
const activitySQL = `
SELECT coalesce(string_agg(pid || ' ' || state || ' ' || coalesce(wait_event_type || ':' || wait_event, '-') || ' ' || left(query, 40), E'\n'), '')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`

// A resent event whose two outbox rows fall into consecutive batches of a
// pipeline, the later copy inserted first: the older move's COPY waits for
// the newer move's transaction (a unique-index check on its uncommitted
// row), while the pipeline waits for the older move's COPY before it will
// land, and so end, the newer one. PostgreSQL sees no cycle (the newer
// backend is idle in transaction), so it would never break it: the relay
// would hang holding the audit_seq lock, with every other relay behind it.
// After stallAfter the newer move is rolled back, and all moves.
//
// The later copy gets in first here because the older move's COPY is held
// back (an uncommitted insert of the row before the resent one, rolled back
// once the newer move has copied); under load a slow COPY does the same.
// (Found by review; the tests in this file hung or failed before the fix.)
func TestPipelineResendAcrossItsMovesDoesNotHang(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	es := eventsAt(200, time.Now().Add(-time.Minute))
	ids := record(t, pool, es[:100]) // pos 1..100: the first batch
	again := es[99]
	again.ID = ids[99]
	record(t, pool, []outbox.Event{again}) // pos 101: first row of the second batch
	record(t, pool, es[100:199])           // pos 102..200

	// Hold the first move's COPY back at pos 99.
	blocker := holdBack(t, pool, 99)

	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	following := make(chan struct{})
	var once sync.Once
	r.hooks.launched = func(_ moveResult, f bool) {
		if f {
			once.Do(func() { close(following) })
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-following:
		case <-ctx.Done():
			return
		}
		// Once the second move has copied (idle in transaction after its
		// COPY), let the first move's COPY go on.
		for ctx.Err() == nil {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle in transaction' AND query ILIKE 'copy%'`).Scan(&n)
			if err == nil && n > 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		rollback(ctx, blocker)
	}()

	n, err := r.Drain(ctx)
	wg.Wait()
	require.NoError(t, err, "Drain did not finish: the pipeline deadlocked on the resend")
	require.Equal(t, 200, n)
	requireIntactChains(t, pool, 199)
	require.Equal(t, uint64(1), r.Stats().GaveWay, "the newer move was rolled back for the stall")
	require.Equal(t, uint64(1), r.Stats().Duplicates)
}

// holdBack makes a COPY of the outbox row at pos wait: it inserts the same
// event into audit_events in a transaction left open, which the caller
// rolls back to let the COPY go on (and which is rolled back at cleanup).
func holdBack(t *testing.T, pool *pgxpool.Pool, pos int64) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { rollback(context.Background(), tx) })
	_, err = tx.Exec(t.Context(), `
INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, source)
SELECT 0, id, workspace_id, occurred_at, recorded_at, action, actor_type, source
FROM audit_outbox WHERE pos = $1`, pos)
	require.NoError(t, err)
	return tx
}

// eventsAt returns events(n), all occurred at at: resends of one need the
// same occurred_at.
func eventsAt(n int, at time.Time) []outbox.Event {
	es := events(n)
	for i := range es {
		es[i].OccurredAt = at
	}
	return es
}

// recordResendAfterBigBatch records 1,000 large events (~8 KiB of details
// each, so that their COPY takes a while) with a resent event last, then
// 1,000 small ones starting with the resend: with batches of 1,000 the
// second move's COPY inserts the resend before the first's reaches it.
func recordResendAfterBigBatch(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	at := time.Now().Add(-time.Minute)
	big := eventsAt(1000, at)
	pad := strings.Repeat("x", 8<<10)
	for i := range big {
		big[i].Details = map[string]any{"i": i, "pad": pad}
	}
	ids := record(t, pool, big) // pos 1..1000
	again := big[999]
	again.ID = ids[999]
	record(t, pool, append([]outbox.Event{again}, eventsAt(999, at)...)) // pos 1001..2000
}

// waitForBackend polls until a backend of this database matches cond (a
// pg_stat_activity condition), or ctx ends.
func waitForBackend(ctx context.Context, t *testing.T, pool interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, cond string) bool {
	for ctx.Err() == nil {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND `+cond).Scan(&n)
		if err == nil && n > 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("no backend with %s", cond)
	return false
}

// A move launched ahead holds uncommitted rows in audit_events before it
// takes the counter lock. Another relay's move (here a plain MoveOnce) that
// holds the counter and copies a resend of one of those rows waits for the
// move launched ahead; had that move's finish waited for the counter, the
// two would deadlock (PostgreSQL would fail one after deadlock_timeout). It
// takes the counter with NOWAIT instead and rolls back: no error, no
// deadlock.
func TestPipelineDoesNotDeadlockAnotherRelay(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	es := eventsAt(250, time.Now().Add(-time.Minute))
	record(t, pool, es[:100])           // pos 1..100: A's first move
	ids := record(t, pool, es[100:200]) // pos 101..200: A's second move, launched ahead
	again := es[149]                    // at pos 150
	again.ID = ids[49]
	record(t, pool, []outbox.Event{again}) // pos 201: B's move
	record(t, pool, es[200:249])           // pos 202..250

	a := pipelinedRelay(t, pool, Config{BatchSize: 100})
	b := newRelay(t, pool, Config{BatchSize: 10})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	bErr := make(chan error, 1)
	var once sync.Once
	a.hooks.afterCommit = func(moveResult) {
		once.Do(func() {
			// A's first move committed; its second has copied pos 101..200
			// and waits, idle in transaction, to be landed.
			if !waitForBackend(ctx, t, pool, `state = 'idle in transaction' AND query ILIKE 'copy%'`) {
				bErr <- nil
				return
			}
			go func() {
				_, err := b.MoveOnce(ctx) // claims pos 201..210 and the counter
				bErr <- err
			}()
			waitForBackend(ctx, t, pool, `wait_event = 'transactionid'`)
		})
	}

	n, aErr := a.Drain(ctx)
	errB := <-bErr
	t.Logf("relay A: moved %d, error %v, stats %+v", n, aErr, a.Stats())
	t.Logf("relay B: error %v, stats %+v", errB, b.Stats())
	require.NoError(t, aErr, "relay A")
	require.NoError(t, errB, "relay B")
	require.Zero(t, a.Stats().Errors+b.Stats().Errors, "no move failed (no deadlock detected)")
	require.Equal(t, uint64(1), a.Stats().Conflicts)
}

// The same deadlock with nothing holding the first move back: its batch is
// large events (~8 KiB of details each), so its COPY takes a while, and the
// resent event is its last row; the second batch is small events starting
// with the resend, so the second move's COPY inserts it first.
func TestPipelineResendAcrossItsMovesUnaided(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	recordResendAfterBigBatch(t, pool)

	r := pipelinedRelay(t, pool, Config{BatchSize: 1000})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	n, err := r.Drain(ctx)
	if err != nil {
		var activity string
		if qerr := pool.QueryRow(t.Context(), activitySQL).Scan(&activity); qerr == nil {
			t.Logf("backends after Drain gave up:\n%s", activity)
		}
	}
	require.NoError(t, err, "Drain did not finish: the pipeline deadlocked on the resend")
	require.Equal(t, 2000, n)
	requireIntactChains(t, pool, 1999)
}

// While a pipeline's older move is stalled so, it holds the audit_seq
// lock: the relay must get unstuck by itself, or another relay's move would
// wait for good, and Stop would not return.
func TestPipelineStallDoesNotHoldUpOtherRelays(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	recordResendAfterBigBatch(t, pool)

	r := pipelinedRelay(t, pool, Config{BatchSize: 1000})
	require.NoError(t, r.Start(t.Context()))
	waitUntil(t, func() (bool, string) {
		return r.Stats().Moved == 2000, "the relay did not move the resend's batches"
	})

	record(t, pool, events(10)) // for another relay
	other := newRelay(t, pool, Config{BatchSize: 10})
	octx, ocancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer ocancel()
	_, err := other.MoveOnce(octx)
	require.NoError(t, err, "another relay's move")

	sctx, scancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer scancel()
	require.NoError(t, r.Stop(sctx))
	requireIntactChains(t, pool, 2009)
}

// Drain ends once a move from the head of the outbox claims nothing. When
// the claim cursor's periodic rescan (rescanEvery) sends the move launched
// after a full one to the head, that move skips the full one's rows (locked
// by it) and claims nothing; if the full one is then rolled back for a
// conflict with another relay, Drain must go on: a whole batch is still in
// the outbox.
func TestDrainGoesOnAfterAConflict(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	const batch = 10
	record(t, pool, events(rescanEvery*batch))
	r := pipelinedRelay(t, pool, Config{BatchSize: batch})
	other := newRelay(t, pool, Config{BatchSize: batch})
	commits := 0
	r.hooks.afterCommit = func(moveResult) {
		commits++
		if commits == rescanEvery-1 {
			// The rescanEvery-th move, launched after this one, is in
			// flight; another relay commits a move before it lands.
			record(t, pool, events(1))
			n, err := other.MoveOnce(t.Context())
			require.NoError(t, err)
			require.Equal(t, 1, n)
		}
	}
	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	t.Logf("Drain moved %d, stats %+v", n, r.Stats())
	require.Zero(t, outboxDepth(t, pool), "Drain returned with rows in the outbox")
}

// A move whose launch fails (here: its connection was terminated) while the
// move before it is in flight ends Drain with an error and counts in
// Stats.Errors, also when the move in flight then lands with a conflict
// (which redo takes in its stride: the launch error must not go with it).
func TestPipelineLaunchFailureIsReported(t *testing.T) {
	t.Parallel()
	for _, conflict := range []bool{false, true} {
		t.Run(map[bool]string{false: "alone", true: "behind a conflict"}[conflict], func(t *testing.T) {
			t.Parallel()
			dbURL := testdb.NewURL(t)
			pool := openPool(t, dbURL, 4)
			createPartitions(t, pool)
			record(t, pool, events(500))
			otherPool := openPool(t, dbURL, 2)
			ctl := openPool(t, dbURL, 1)
			r := pipelinedRelay(t, pool, Config{BatchSize: 100})
			other := newRelay(t, otherPool, Config{BatchSize: 10})
			var firstPID int64
			r.hooks.launched = func(_ moveResult, following bool) {
				if !following && firstPID == 0 {
					// The first move, idle in transaction after reading the heads.
					firstPID = queryInt(t, ctl, `SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND state = 'idle in transaction' AND query LIKE '%audit_chain_heads%'`)
				}
			}
			var once sync.Once
			r.hooks.afterCommit = func(moveResult) {
				once.Do(func() {
					// The first move committed, the second is in flight.
					// Another relay commits a move (conflict), then the first
					// move's connection, which the third move will use, is
					// terminated.
					if conflict {
						if n, err := other.MoveOnce(t.Context()); err != nil || n != 10 {
							t.Errorf("the other relay's move: %d, %v", n, err)
						}
					}
					if queryInt(t, ctl, `SELECT count(pg_terminate_backend($1::int))`, firstPID) != 1 {
						t.Errorf("terminating %d", firstPID)
					}
				})
			}
			n, err := r.Drain(t.Context())
			t.Logf("Drain: moved %d, error %v, stats %+v", n, err, r.Stats())
			require.Error(t, err, "Drain reports the failed launch")
			require.Equal(t, uint64(1), r.Stats().Errors, "the failed launch is counted")
		})
	}
}

// The cross-relay form of the pipeline deadlock, which PostgreSQL would
// not see either: relay B has moves 2 and 3 in flight; relay A's move (a
// plain MoveOnce) holds the counter, and its COPY reaches a resent event
// whose other copy B's move 3 has inserted, so it waits for move 3, which B
// lands only after move 2. Had move 2's finish waited for the counter, the
// three would wait for each other; it takes it with NOWAIT, rolls back, and
// move 3 with it.
func TestPipelineResendAcrossRelaysDoesNotHang(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	es := eventsAt(310, time.Now().Add(-time.Minute))
	ids := record(t, pool, es[:210]) // pos 1..210; A will claim 201..210
	again := es[209]
	again.ID = ids[209]
	record(t, pool, es[210:249])           // pos 211..249
	record(t, pool, []outbox.Event{again}) // pos 250: in B's third move
	record(t, pool, es[249:309])           // pos 251..310

	// Hold A's COPY back at pos 209.
	blocker := holdBack(t, pool, 209)

	a := pipelinedRelay(t, pool, Config{BatchSize: 10})
	b := newRelay(t, pool, Config{BatchSize: 100})
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()

	aErr := make(chan error, 1)
	var wg sync.WaitGroup
	var once sync.Once
	b.hooks.afterCommit = func(moveResult) {
		once.Do(func() {
			// B's first move committed, its second is in flight. A takes
			// the counter and copies pos 201..210, held back at 209.
			go func() {
				_, err := a.MoveOnce(ctx)
				aErr <- err
			}()
			waitForBackend(ctx, t, pool, `wait_event = 'transactionid'`)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// B's third move has copied (pos 211..310), or its second
				// has found the counter taken: let A's COPY go on.
				for ctx.Err() == nil && b.Stats().Conflicts == 0 {
					time.Sleep(5 * time.Millisecond)
				}
				rollback(ctx, blocker)
			}()
		})
	}

	_, errB := b.Drain(ctx)
	wg.Wait()
	errA := <-aErr
	require.NoError(t, errA, "relay A")
	require.NoError(t, errB, "relay B")
	require.Equal(t, uint64(1), b.Stats().Conflicts, "B's second move found the counter taken")
	requireIntactChains(t, pool, 309) // one of the 310 rows a resend
}
