package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// brokenLinksSQL counts stored events whose links are wrong: prev_hash
// not the hash of the workspace's event before it in seq order (32 zero
// bytes for the first), or hash not SHA-256(prev_hash || canonical bytes)
// as the database computes them; and chain heads that are not the hash of
// their workspace's last event.
const brokenLinksSQL = `
WITH e AS (
    SELECT workspace_id, seq, prev_hash, hash,
           lag(hash) OVER (PARTITION BY workspace_id ORDER BY seq) AS before,
           sha256(prev_hash || convert_to(audit_event_canonical(id, workspace_id, occurred_at, recorded_at,
               action, actor_type, actor_id, actor_email, actor_name, resource_type, resource_ids,
               source, ip, user_agent, request_id, details), 'UTF8')) AS want
    FROM audit_events
), last AS (
    SELECT DISTINCT ON (workspace_id) workspace_id, seq, hash FROM audit_events ORDER BY workspace_id, seq DESC
)
SELECT (SELECT count(*) FROM e
        WHERE hash IS DISTINCT FROM want
           OR prev_hash IS DISTINCT FROM coalesce(before, decode(repeat('00', 32), 'hex')))
     + (SELECT count(*) FROM last FULL JOIN audit_chain_heads h USING (workspace_id)
        WHERE h.hash IS DISTINCT FROM last.hash OR h.seq IS DISTINCT FROM last.seq)`

// requireIntactChains checks every link and head, and that every event of
// the outbox was stored once.
func requireIntactChains(t *testing.T, pool *pgxpool.Pool, want int64) {
	t.Helper()
	total, ids, seqs := eventCounts(t, pool)
	require.Equal(t, []int64{want, want, want}, []int64{total, ids, seqs}, "every event stored once, each with its own seq")
	require.Zero(t, outboxDepth(t, pool))
	require.Zero(t, queryInt(t, pool, brokenLinksSQL), "broken links or heads")
}

// pipelinedRelay is newRelay with two of pool's connections opened and left
// idle first, so that its pipelines get their second connection at once
// (they wait only secondConnWait for one the pool has to make).
func pipelinedRelay(t *testing.T, pool *pgxpool.Pool, cfg Config) *Relay {
	t.Helper()
	warm(t, pool)
	return newRelay(t, pool, cfg)
}

// warm opens two connections of pool and leaves them idle.
func warm(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var conns []*pgxpool.Conn
	for range 2 {
		c, err := pool.Acquire(t.Context())
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
}

// launches counts r's moves launched while another was in flight.
func launches(r *Relay) *atomic.Int64 {
	var following atomic.Int64
	r.hooks.launched = func(_ moveResult, f bool) {
		if f {
			following.Add(1)
		}
	}
	return &following
}

// While a backlog drains, each move is launched while the one before it is
// in flight, and the events, their seq and their links come out as if moved
// one batch at a time.
func TestPipelineKeepsTwoMovesInFlight(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, shapedEvents(1000))
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	following := launches(r)

	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 1000, n)
	require.Equal(t, int64(9), following.Load(), "every move after the first went on from the one in flight")
	require.Equal(t, uint64(10), r.Stats().Batches)
	requireIntactChains(t, pool, 1000)
	require.Equal(t, int64(1000), queryInt(t, pool, `SELECT max(seq) FROM audit_events`), "no seq lost")
	require.Equal(t, int64(1000), queryInt(t, pool, `SELECT last_seq FROM audit_seq`))
}

// A move committed by another relay between a move and the one launched
// after it: the later one finds the counter moved on, rolls back, and its
// rows are moved again; nothing is lost, duplicated or mislinked. The relay
// then moves one batch at a time for conflictPause.
func TestPipelineYieldsToAnotherRelaysMove(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, shapedEvents(500))
	reg := prometheus.NewRegistry()
	r := pipelinedRelay(t, pool, Config{BatchSize: 100, Registerer: reg})
	other := newRelay(t, pool, Config{BatchSize: 50})
	var once sync.Once
	var followingAfter atomic.Int64
	r.hooks.launched = func(_ moveResult, following bool) {
		if following && r.Stats().Conflicts > 0 {
			followingAfter.Add(1)
		}
	}
	r.hooks.afterCommit = func(moveResult) {
		// r's first move has committed and its second is in flight,
		// numbered and linked on from the first.
		once.Do(func() {
			n, err := other.MoveOnce(context.WithoutCancel(t.Context()))
			if err != nil || n != 50 {
				t.Errorf("the other relay's move: %d rows, %v", n, err)
			}
		})
	}

	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	requireIntactChains(t, pool, 500)
	require.Equal(t, 450, n)
	require.Equal(t, uint64(1), r.Stats().Conflicts)
	require.Equal(t, 1.0, gather(t, reg)["auditlog_relay_conflicts_total"])
	require.Zero(t, r.Stats().Errors)
	require.Zero(t, followingAfter.Load(), "after the conflict, one move at a time")
	require.True(t, r.yielding())

	// Once the pause is over, moves overlap again.
	r.pauseUntil.Store(0)
	record(t, pool, shapedEvents(300))
	following := launches(r)
	n, err = r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 300, n)
	require.Equal(t, int64(2), following.Load())
	requireIntactChains(t, pool, 800)
}

// A move that fails while the next is in flight (a row that cannot be
// stored): the next is rolled back, the failed batch is split to set the
// row aside, and the drain goes on.
func TestPipelineFailureRollsBackTheNextMove(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	addPoison(t, pool)
	record(t, pool, poisoned(500, 150)) // in the second batch
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	following := launches(r)

	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 499, n)
	require.Equal(t, uint64(1), r.Stats().DeadLettered)
	require.Positive(t, following.Load())
	require.Equal(t, int64(1), queryInt(t, pool, `SELECT count(*) FROM audit_dead_letters`))
	requireIntactChains(t, pool, 499)
}

// A resend in a move launched while another was in flight is stored once,
// outside the chain.
func TestPipelineResendStoredOnce(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	es := shapedEvents(300)
	for i := range es {
		es[i].OccurredAt = time.Now().Add(-time.Minute)
	}
	ids := record(t, pool, es)
	again := es[20]
	again.ID = ids[20]
	record(t, pool, []outbox.Event{again}) // lands in the fourth batch
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})

	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 301, n)
	require.Equal(t, uint64(1), r.Stats().Duplicates)
	requireIntactChains(t, pool, 300)
}

// With one connection in the pool, or none to spare, moves go one at a
// time, and a failure is dealt with once the connection is back.
func TestPipelineWithoutASecondConnection(t *testing.T) {
	t.Parallel()
	dbURL := testdb.NewURL(t)
	setupPool := openPool(t, dbURL, 1)
	createPartitions(t, setupPool)
	addPoison(t, setupPool)
	record(t, setupPool, poisoned(400, 250))
	setupPool.Close()

	t.Run("pool of one", func(t *testing.T) {
		pool := openPool(t, dbURL, 1)
		r := newRelay(t, pool, Config{BatchSize: 100})
		following := launches(r)
		n, err := r.Drain(t.Context())
		require.NoError(t, err)
		require.Equal(t, 399, n)
		require.Zero(t, following.Load())
		require.Equal(t, uint64(1), r.Stats().DeadLettered)
	})

	t.Run("pool busy", func(t *testing.T) {
		pool := openPool(t, dbURL, 2)
		record(t, pool, events(300))
		busy, err := pool.Acquire(t.Context())
		require.NoError(t, err)
		defer busy.Release()
		r := newRelay(t, pool, Config{BatchSize: 100})
		following := launches(r)
		n, err := r.Drain(t.Context())
		require.NoError(t, err)
		require.Equal(t, 300, n)
		require.Zero(t, following.Load())
	})

	pool := openPool(t, dbURL, 2)
	require.Zero(t, queryInt(t, pool, brokenLinksSQL))
	require.Equal(t, int64(699), queryInt(t, pool, `SELECT count(DISTINCT id) FROM audit_events`))
}

// Stopping the relay while a move is in flight after another: the older
// commits, the newer rolls back, and its rows wait for the next relay.
func TestPipelineStopRollsBackTheNewerMove(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, shapedEvents(1000))
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	var seen atomic.Bool
	stopped := make(chan struct{})
	r.hooks.launched = func(_ moveResult, following bool) {
		if following && seen.CompareAndSwap(false, true) {
			// The first move is in flight, the second just launched.
			go func() {
				defer close(stopped)
				if err := r.Stop(context.WithoutCancel(t.Context())); err != nil {
					t.Errorf("Stop: %v", err)
				}
			}()
			// Not require: this runs in the relay's goroutine.
			r.mu.Lock()
			stop := r.run.stop
			r.mu.Unlock()
			select {
			case <-stop:
			case <-time.After(testTimeout):
				t.Error("Stop never signalled the loop")
			}
		}
	}
	require.NoError(t, r.Start(t.Context()))
	<-stopped
	require.Equal(t, uint64(1), r.Stats().Batches, "only the older move committed")
	total, _, _ := eventCounts(t, pool)
	require.Equal(t, int64(100), total)
	require.Equal(t, int64(900), outboxDepth(t, pool))

	next := newRelay(t, pool, Config{BatchSize: 100})
	n, err := next.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 900, n)
	requireIntactChains(t, pool, 1000)
}

// The relay's own database transaction is rolled back when the pipeline's
// context ends mid-copy; nothing is half stored.
func TestPipelineCancelledMidCopy(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	record(t, pool, shapedEvents(2000))
	r := pipelinedRelay(t, pool, Config{BatchSize: 500})
	ctx, cancel := context.WithCancel(t.Context())
	r.hooks.launched = func(_ moveResult, following bool) {
		if following {
			cancel() // while the first move copies, or lands
		}
	}
	_, err := r.Drain(ctx)
	require.ErrorIs(t, err, context.Canceled)
	r.hooks.launched = nil
	stored := queryInt(t, pool, `SELECT count(*) FROM audit_events`)
	require.Zero(t, stored%500, "whole batches only: %d stored", stored)
	require.Equal(t, 2000-stored, outboxDepth(t, pool))

	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2000, int(stored)+n)
	requireIntactChains(t, pool, 2000)
}

// A copy counts as stalled after a second, or after three times the last
// copy's duration when that is longer (large batches).
func TestStallLimit(t *testing.T) {
	t.Parallel()
	require.Equal(t, stallAfter, stallLimit(0))
	require.Equal(t, stallAfter, stallLimit(30*time.Millisecond))
	require.Equal(t, 6*time.Second, stallLimit(2*time.Second))
}
