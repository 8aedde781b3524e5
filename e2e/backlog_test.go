package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/relay"
)

// TestBacklogHeldSnapshot is the always-run, scaled-down version of the
// soak TestBacklogMillionHeldSnapshot: 20,000 outbox rows drained while a
// REPEATABLE READ transaction holds the xmin horizon back.
func TestBacklogHeldSnapshot(t *testing.T) {
	t.Parallel()
	runBacklog(t, 20_000, 30*time.Second, 2*time.Minute)
}

// backlogChunk is how many events one RecordBatch (one COPY, one
// transaction) writes while building the backlog.
const backlogChunk = 10_000

const (
	sqlHeldSnapshot = `
SELECT state, backend_xmin IS NOT NULL
FROM pg_stat_activity WHERE pid = $1`
	sqlOutboxDeadTuples = `
SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'audit_outbox'`
)

// runBacklog builds a backlog of n outbox rows while another session holds a
// snapshot open (BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ...), so no
// row the relay deletes can be vacuumed away, then runs the relay in-process
// and asserts that it never stalls longer than stallBound, drains everything
// within drainBound, and stores each event exactly once. It logs the rate.
func runBacklog(t *testing.T, n int, stallBound, drainBound time.Duration) {
	const workspace = "ws_backlog"
	ctx := context.Background()
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 4)
	log := testLogger(t)

	maint, err := partitions.New(pool, partitions.Config{RetentionDays: 365, Premake: 1, Logger: log})
	require.NoError(t, err)
	_, err = maint.Ensure(ctx)
	require.NoError(t, err)

	// The long transaction, opened before the backlog exists and kept open
	// until the end.
	held, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = held.Close(context.Background()) })
	_, err = held.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ`)
	require.NoError(t, err)
	var heldPID int
	require.NoError(t, held.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&heldPID))
	requireHolding(t, pool, heldPID)

	began := time.Now()
	insertBacklog(t, pool, workspace, n)
	t.Logf("backlog of %d outbox rows written in %s", n, time.Since(began).Round(time.Millisecond))

	r, err := relay.New(pool, relay.Config{BatchSize: 1000, PollInterval: 50 * time.Millisecond, Partitions: maint, Logger: log})
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, r.Stop(ctx))
	})

	// Progress: Moved must grow at least once every stallBound.
	var (
		lastMoved    uint64
		lastProgress = time.Now()
		marks        []string // time at each tenth of the backlog
		nextMark     = uint64(n / 10)
	)
	for {
		st := r.Stats()
		now := time.Now()
		if st.Moved > lastMoved {
			lastMoved, lastProgress = st.Moved, now
		}
		for nextMark > 0 && st.Moved >= nextMark && len(marks) < 10 {
			marks = append(marks, now.Sub(start).Round(100*time.Millisecond).String())
			nextMark += uint64(n / 10)
		}
		if st.Moved >= uint64(n) {
			break
		}
		require.Less(t, now.Sub(lastProgress), stallBound, "the relay stalled at %d of %d moved (stats %+v)", st.Moved, n, st)
		require.Less(t, now.Sub(start), drainBound, "the backlog was not drained in time: %d of %d moved", st.Moved, n)
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(start)
	st := r.Stats()

	requireHolding(t, pool, heldPID) // the horizon was held back the whole time
	var dead int64
	require.NoError(t, pool.QueryRow(ctx, sqlOutboxDeadTuples).Scan(&dead))
	c := countStore(t, pool, workspace)
	require.Equal(t, storeCounts{Rows: int64(n), DistinctIDs: int64(n), DistinctSeqs: int64(n)}, c)
	require.Zero(t, st.Errors, "relay errors")
	require.Zero(t, st.DeadLettered, "dead letters")
	require.Equal(t, uint64(n), st.Moved)
	t.Logf("relay drained %d rows under a held snapshot in %s: %.0f rows/s, %d batches; "+
		"elapsed at each tenth: %s; audit_outbox dead tuples (stats, may lag): %d",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), st.Batches,
		strings.Join(marks, " "), dead)

	_, err = held.Exec(ctx, `COMMIT`)
	require.NoError(t, err)
}

// requireHolding asserts that the session pid is idle in a transaction whose
// snapshot holds back the xmin horizon.
func requireHolding(t *testing.T, pool *pgxpool.Pool, pid int) {
	t.Helper()
	var state string
	var hasXmin bool
	require.NoError(t, pool.QueryRow(context.Background(), sqlHeldSnapshot, pid).Scan(&state, &hasXmin))
	require.Equal(t, "idle in transaction", state)
	require.True(t, hasXmin, "the held transaction has no snapshot (backend_xmin is null)")
}

// insertBacklog writes n events of workspace into the outbox with
// outbox.RecordBatch (COPY), backlogChunk per transaction, two writers.
func insertBacklog(t *testing.T, pool *pgxpool.Pool, workspace string, n int) {
	t.Helper()
	chunks := make(chan int)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range 2 {
		wg.Go(func() {
			for size := range chunks {
				if err := recordChunk(pool, workspace, size); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for left := n; left > 0; left -= backlogChunk {
		chunks <- min(left, backlogChunk)
	}
	close(chunks)
	wg.Wait()
	require.Empty(t, errs)
}

func recordChunk(pool *pgxpool.Pool, workspace string, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	now := time.Now().UTC()
	events := make([]outbox.Event, size)
	for i := range events {
		events[i] = outbox.Event{
			ID:          uuid.NewString(),
			WorkspaceID: workspace,
			OccurredAt:  now.Add(-time.Duration(i) * time.Millisecond),
			Action:      "e2e.backlog",
			Actor:       outbox.Actor{Type: outbox.ActorService, ID: "e2e-backlog"},
			Source:      "import",
			Details:     map[string]any{"i": i},
		}
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := outbox.RecordBatch(ctx, tx, events); err != nil {
			return fmt.Errorf("recording a backlog chunk of %d: %w", size, err)
		}
		return nil
	})
}

// testLogger logs warnings and errors of in-process components to the test.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
