package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests; generous for a loaded CI.
const testTimeout = 2 * time.Minute

// setup returns a pool on a fresh database with partitions for the previous,
// current and next month, so that events recorded now can be stored.
func setup(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := testdb.New(t)
	createPartitions(t, pool)
	return pool
}

// openPool opens a pool of at most maxConns on dbURL, closed at cleanup.
func openPool(t testing.TB, dbURL string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func createPartitions(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	now := time.Now().UTC()
	for _, m := range []int{-1, 0, 1} {
		_, err := monthPartition(t.Context(), pool, now.AddDate(0, m, 0))
		require.NoError(t, err)
	}
}

// monthPartition creates the monthly audit_events partition holding at, as
// the partition maintenance would, and returns its name.
func monthPartition(ctx context.Context, pool *pgxpool.Pool, at time.Time) (string, error) {
	at = at.UTC()
	from := time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)
	name := "audit_events_p" + from.Format("20060102")
	// Bounds are formatted from time.Time values, never from input.
	sql := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF audit_events FOR VALUES FROM ('%s') TO ('%s')`,
		pgx.Identifier{name}.Sanitize(), from.Format(time.RFC3339), to.Format(time.RFC3339))
	if _, err := pool.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("creating partition %s: %w", name, err)
	}
	return name, nil
}

// testEnsurer is a PartitionEnsurer creating monthly partitions.
type testEnsurer struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	calls atomic.Int64
}

func (e *testEnsurer) EnsureFor(ctx context.Context, at time.Time) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls.Add(1)
	return monthPartition(ctx, e.pool, at)
}

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newRelay returns a Relay on pool, stopped at cleanup.
func newRelay(t testing.TB, pool *pgxpool.Pool, cfg Config) *Relay {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	r, err := New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		require.NoError(t, r.Stop(ctx))
	})
	return r
}

// event returns a valid event numbered i.
func event(i int) outbox.Event {
	return outbox.Event{
		WorkspaceID: "ws_test",
		Action:      "test.event",
		Actor:       outbox.Actor{Type: outbox.ActorUser, ID: "u_1"},
		Source:      "api",
		Details:     map[string]any{"i": i},
	}
}

// poisonAction is the action addPoison makes audit_events refuse.
const poisonAction = "poison.row"

// addPoison makes audit_events refuse events whose action is poisonAction:
// a row error (a CHECK violation) that is not a missing partition.
func addPoison(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(t.Context(), `ALTER TABLE audit_events ADD CONSTRAINT poison CHECK (action <> '`+poisonAction+`')`)
	require.NoError(t, err)
}

// poisoned returns events(n) with the events at the indexes at poisoned.
func poisoned(n int, at ...int) []outbox.Event {
	es := events(n)
	for _, i := range at {
		es[i].Action = poisonAction
	}
	return es
}

// shapedEvents returns n events shaped like auditlog bench's: 50
// workspaces, an actor with email and name, three resource ids, an address,
// ~300 bytes of details. For measurements where the size of an event
// matters (the chain hashes every byte).
func shapedEvents(n int) []outbox.Event {
	es := make([]outbox.Event, n)
	for i := range es {
		es[i] = outbox.Event{
			WorkspaceID: fmt.Sprintf("ws_%04d", i%50),
			Action:      "ticket.update",
			Actor: outbox.Actor{Type: outbox.ActorUser, ID: fmt.Sprintf("u_%d", i%200),
				Email: fmt.Sprintf("user%d@example.com", i%200), Name: "Alice Liddell"},
			Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": fmt.Sprintf("t_%d", i), "queue": "q_7", "channel": "C0451"}},
			Source:   "web", IP: "203.0.113.7", UserAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
			RequestID: fmt.Sprintf("req_%d", i),
			Details: map[string]any{"changes": map[string]any{
				"status":   map[string]any{"from": "open", "to": "closed"},
				"priority": map[string]any{"from": "normal", "to": "high"},
				"subject":  map[string]any{"from": "Printer on fire", "to": "Printer on fire (again)"},
			}, "comment": fmt.Sprintf("Closed after the customer confirmed the replacement printer works as expected (%d).", i)},
		}
	}
	return es
}

// events returns n valid events.
func events(n int) []outbox.Event {
	es := make([]outbox.Event, n)
	for i := range es {
		es[i] = event(i)
	}
	return es
}

// record writes es into the outbox in one committed transaction and returns
// their ids in order.
func record(t testing.TB, pool *pgxpool.Pool, es []outbox.Event) []string {
	t.Helper()
	ids, err := recordErr(t.Context(), pool, es)
	require.NoError(t, err)
	return ids
}

func recordErr(ctx context.Context, pool *pgxpool.Pool, es []outbox.Event) ([]string, error) {
	var ids []string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		ids, err = outbox.Default().RecordBatchIDs(ctx, tx, es)
		return err
	})
	return ids, err
}

// moveAll runs MoveOnce until the outbox is empty and returns the total
// moved.
func moveAll(t testing.TB, r *Relay, pool *pgxpool.Pool) int {
	t.Helper()
	total := 0
	for range 10_000 {
		n, err := r.MoveOnce(t.Context())
		require.NoError(t, err)
		total += n
		if outboxDepth(t, pool) == 0 {
			return total
		}
	}
	t.Fatal("outbox not empty after 10000 moves")
	return 0
}

func outboxDepth(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	return queryInt(t, pool, `SELECT count(*) FROM audit_outbox`)
}

func queryInt(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, pool.QueryRow(t.Context(), sql, args...).Scan(&n))
	return n
}

// eventCounts returns the stored events, their distinct ids and distinct seqs.
func eventCounts(t testing.TB, pool *pgxpool.Pool) (total, ids, seqs int64) {
	t.Helper()
	require.NoError(t, pool.QueryRow(t.Context(),
		`SELECT count(*), count(DISTINCT id), count(DISTINCT seq) FROM audit_events`).Scan(&total, &ids, &seqs))
	return total, ids, seqs
}

// idsBySeq returns the stored event ids in seq order.
func idsBySeq(t testing.TB, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT id::text FROM audit_events ORDER BY seq`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ids
}

// waitUntil polls cond until it holds, failing the test with what cond last
// said after testTimeout.
func waitUntil(t testing.TB, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting: %s", testTimeout, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drained is a waitUntil condition: want events stored and the outbox empty.
func drained(t testing.TB, pool *pgxpool.Pool, want int64) func() (bool, string) {
	return func() (bool, string) {
		n := queryInt(t, pool, `SELECT count(*) FROM audit_events`)
		depth := outboxDepth(t, pool)
		return n == want && depth == 0, fmt.Sprintf("%d of %d events stored, outbox depth %d", n, want, depth)
	}
}
