package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// ddlActivitySQL describes this database's client backends other than
// the caller, with whom each waits for (pg_blocking_pids).
const ddlActivitySQL = `
SELECT coalesce(string_agg(pid || ' ' || state || ' ' || coalesce(wait_event_type || ':' || wait_event, '-')
       || ' blocked_by=' || pg_blocking_pids(pid)::text || ' ' || left(regexp_replace(query, '\s+', ' ', 'g'), 60),
       E'\n' ORDER BY pid), '')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`

// queuedDDL runs ddl on pool while a pipeline is in flight: fire starts it
// (from a relay hook, in the relay's goroutine) and returns once it waits
// for a lock, so the relay goes on with the DDL queued. The DDL gets
// timeout; done reports its error and how long it took.
type queuedDDL struct {
	t       *testing.T
	pool    *pgxpool.Pool
	ddl     string
	timeout time.Duration
	once    sync.Once
	wg      sync.WaitGroup
	err     error
	took    time.Duration
	// activity is pg_stat_activity halfway through the DDL's timeout.
	activity string
}

func (d *queuedDDL) fire(ctx context.Context) {
	d.once.Do(func() {
		d.wg.Add(2)
		go func() {
			defer d.wg.Done()
			dctx, cancel := context.WithTimeout(ctx, d.timeout)
			defer cancel()
			start := time.Now()
			_, d.err = d.pool.Exec(dctx, d.ddl)
			d.took = time.Since(start)
		}()
		waitForBackend(ctx, d.t, d.pool, `wait_event_type = 'Lock' AND query = '`+d.ddl+`'`)
		go func() {
			defer d.wg.Done()
			select {
			case <-time.After(d.timeout / 2):
			case <-ctx.Done():
				return
			}
			_ = d.pool.QueryRow(ctx, ddlActivitySQL).Scan(&d.activity)
		}()
	})
}

func (d *queuedDDL) wait() {
	d.wg.Wait()
	d.t.Logf("DDL %q: %v after %s; backends at %s:\n%s", d.ddl, d.err, d.took.Round(time.Millisecond), d.timeout/2, d.activity)
}

// A migration's ALTER TABLE audit_outbox (as 00009 did; serve runs
// migrations at start-up, without lock_timeout) arrives while a pipeline's
// first move holds its claim. The ALTER queues behind that move; the move
// launched next queues behind the ALTER in its claim, and the pipeline's
// goroutine, blocked in that launch, would never land the first move (idle
// in transaction): a cycle PostgreSQL cannot see, broken only by the
// server's idle_in_transaction_session_timeout (60 s as app/database.go
// sets it), with every insert into the outbox queued behind the ALTER
// meanwhile. The move launched ahead gives way after its lock_timeout (1 s)
// instead. One move at a time, the ALTER goes through as soon as the move
// commits. (Found by a second review; failed before the fix.)
func TestPipelineGivesWayToDDLOnTheOutbox(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		conns int32
		idle  string // idle_in_transaction_session_timeout of the relay's pool
	}{
		{"one move at a time", 1, ""},
		{"two in flight", 4, ""},
		{"two in flight, idle_in_transaction_session_timeout 2s", 4, "2000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dbURL := testdb.NewURL(t)
			cfg, err := pgxpool.ParseConfig(dbURL)
			require.NoError(t, err)
			cfg.MaxConns = tc.conns
			if tc.idle != "" {
				cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = tc.idle
			}
			pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			createPartitions(t, pool)
			ddlPool := openPool(t, dbURL, 3)
			record(t, pool, events(300))
			if tc.conns > 1 {
				warm(t, pool)
			}
			r := newRelay(t, pool, Config{BatchSize: 100})
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			d := &queuedDDL{t: t, pool: ddlPool, timeout: 6 * time.Second,
				ddl: `ALTER TABLE audit_outbox ADD COLUMN ddl_probe integer NOT NULL DEFAULT 0`}
			var ingest sync.WaitGroup
			var ingestErr error
			var ingestTook time.Duration
			var first sync.Once
			r.hooks.launched = func(_ moveResult, following bool) {
				if following {
					return
				}
				first.Do(func() {
					// The first move has claimed its rows (a lock on audit_outbox).
					d.fire(ctx)
					ingest.Add(1)
					go func() {
						// An API request recording an event meanwhile.
						defer ingest.Done()
						time.Sleep(300 * time.Millisecond)
						ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
						defer icancel()
						start := time.Now()
						_, ingestErr = recordErr(ictx, ddlPool, events(1))
						ingestTook = time.Since(start)
					}()
				})
			}
			start := time.Now()
			n, err := r.Drain(ctx)
			took := time.Since(start)
			d.wait()
			ingest.Wait()
			t.Logf("Drain: moved %d in %s, error %v, stats %+v", n, took.Round(time.Millisecond), err, r.Stats())
			t.Logf("an ingest insert meanwhile: %v after %s", ingestErr, ingestTook.Round(time.Millisecond))
			require.NoError(t, d.err, "the ALTER never got its lock: the relay and the ALTER waited for each other")
			// At most the lock_timeout of a move launched ahead (1 s), and
			// some slack for a loaded machine.
			require.Less(t, d.took, 3*time.Second, "the ALTER waited for a relay stuck behind it")
			require.NoError(t, ingestErr, "recording an event waited behind the ALTER")
			require.NoError(t, err)
			if tc.conns > 1 {
				require.Equal(t, uint64(1), r.Stats().GaveWay, "the move launched ahead gave way")
			}
		})
	}
}

// The same cycle through the older move's finish statement: a following
// move whose workspaces were all read before holds no lock on
// audit_chain_heads until its finish writes the heads. The move launched
// after it read a new workspace's head (a lock on audit_chain_heads); an
// ALTER TABLE audit_chain_heads queued behind that lock makes the older
// move's finish wait behind the ALTER, which waits for the newer move, idle
// until the older lands. The older move, launched ahead itself, gives way
// after its lock_timeout. (Found by a second review; hung before the fix.)
func TestPipelineGivesWayToDDLOnChainHeads(t *testing.T) {
	t.Parallel()
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 4)
	createPartitions(t, pool)
	ddlPool := openPool(t, dbURL, 3)
	record(t, pool, events(200)) // ws_test: the first two moves
	other := events(100)
	for i := range other {
		other[i].WorkspaceID = "ws_other"
	}
	record(t, pool, other) // the third move reads ws_other's head
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	d := &queuedDDL{t: t, pool: ddlPool, timeout: 6 * time.Second,
		ddl: `ALTER TABLE audit_chain_heads ADD COLUMN ddl_probe integer`}
	following := 0
	r.hooks.launched = func(_ moveResult, f bool) {
		if f {
			following++
			if following == 2 {
				// The third move has read ws_other's head; the second
				// (all ws_test) is in flight and has not locked the heads.
				d.fire(ctx)
			}
		}
	}
	start := time.Now()
	n, err := r.Drain(ctx)
	took := time.Since(start)
	d.wait()
	t.Logf("Drain: moved %d in %s, error %v, stats %+v", n, took.Round(time.Millisecond), err, r.Stats())
	require.NoError(t, d.err, "the ALTER never got its lock: the older move's finish, the ALTER and the newer move waited in a cycle")
	require.NoError(t, err)
	require.Equal(t, 300, n)
	require.Equal(t, uint64(1), r.Stats().GaveWay, "the older move, launched ahead itself, gave way")
}

// Batches whose copies take 2 s (here a row trigger sleeping 20 ms for
// workspace ws_slow; in production large details, or a busy disk)
// alternating with batches that copy in milliseconds: each slow copy
// outlasts the stall limit set by the fast one before it, but waits on no
// lock, so it is waited for; no move is rolled back for nothing. (Found by a
// second review; failed before the fix.)
func TestPipelineWaitsForASlowCopy(t *testing.T) {
	t.Parallel()
	pool := setup(t)
	_, err := pool.Exec(t.Context(), `
CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
CREATE TRIGGER slow_insert BEFORE INSERT ON audit_events
FOR EACH ROW WHEN (NEW.workspace_id = 'ws_slow') EXECUTE FUNCTION slow_insert();`)
	require.NoError(t, err)
	const rounds = 3
	for range rounds {
		slow := events(100)
		for i := range slow {
			slow[i].WorkspaceID = "ws_slow"
		}
		record(t, pool, slow)
		record(t, pool, events(100))
	}
	r := pipelinedRelay(t, pool, Config{BatchSize: 100})
	var launched atomic.Int64
	r.hooks.launched = func(moveResult, bool) { launched.Add(1) }
	start := time.Now()
	n, err := r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, rounds*200, n)
	t.Logf("Drain moved %d in %s: %d moves launched for %d committed, %d gave way, last copy %s",
		n, time.Since(start).Round(time.Millisecond), launched.Load(), r.Stats().Batches, r.Stats().GaveWay,
		time.Duration(r.lastCopy.Load()).Round(time.Millisecond))
	requireIntactChains(t, pool, rounds*200)
	require.Zero(t, r.Stats().GaveWay, "copies that wait on no lock were called stalled")
	require.Equal(t, int64(r.Stats().Batches), launched.Load(), "moves copied and rolled back for nothing")
}
