package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox/integrity"
)

// drainTimeout bounds waiting for the relay to empty the outbox.
const drainTimeout = 2 * time.Minute

const (
	sqlOutboxDepth = `SELECT count(*) FROM audit_outbox`
	// sqlStoreCounts: the workspace's rows, distinct ids and seqs, the
	// table-wide duplicate seqs, the outbox and the dead letters.
	sqlStoreCounts = `
SELECT (SELECT count(*) FROM audit_events WHERE workspace_id = $1),
       (SELECT count(DISTINCT id) FROM audit_events WHERE workspace_id = $1),
       (SELECT count(DISTINCT seq) FROM audit_events WHERE workspace_id = $1),
       (SELECT count(*) - count(DISTINCT seq) FROM audit_events),
       (SELECT count(*) FROM audit_outbox),
       (SELECT count(*) FROM audit_dead_letters)`
	// sqlStoredPerBatch counts the stored events of each batch (the test
	// clients put the batch id in details).
	sqlStoredPerBatch = `
SELECT (details::jsonb)->>'batch', count(*)
FROM audit_events
WHERE workspace_id = $1 AND action = $2
GROUP BY 1`
	// sqlStoredOf counts the stored rows among ids.
	sqlStoredOf = `SELECT count(*) FROM audit_events WHERE id = ANY($1::uuid[])`
)

// openPool opens a small pool on dbURL, closed at cleanup.
func openPool(t testing.TB, dbURL string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// createKey stores a read+write key for workspace and returns its secret.
func createKey(t testing.TB, pool *pgxpool.Pool, workspace string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, secret, err := auth.Create(ctx, pool, workspace, "e2e", []string{auth.ScopeRead, auth.ScopeWrite})
	require.NoError(t, err)
	return secret
}

// waitFor polls cond every 50ms until it holds, failing the test after
// timeout. An error from cond is remembered and shown, not fatal: the
// database may be coming back.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, error)) time.Duration {
	t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if err == nil && ok {
			return time.Since(began)
		}
		if err != nil {
			lastErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitDrained waits until the outbox is empty.
func waitDrained(t testing.TB, pool *pgxpool.Pool, timeout time.Duration) time.Duration {
	t.Helper()
	return waitFor(t, "the relay to empty the outbox", timeout, func() (bool, error) {
		n, err := outboxDepth(context.Background(), pool)
		return n == 0, err
	})
}

func outboxDepth(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var n int64
	err := pool.QueryRow(ctx, sqlOutboxDepth).Scan(&n)
	return n, err
}

// storeCounts is what the store holds for one workspace.
type storeCounts struct {
	Rows, DistinctIDs, DistinctSeqs int64 // of the workspace
	DuplicateSeqs                   int64 // across the whole table
	Outbox, DeadLetters             int64
}

func countStore(t testing.TB, pool *pgxpool.Pool, workspace string) storeCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var c storeCounts
	require.NoError(t, pool.QueryRow(ctx, sqlStoreCounts, workspace).Scan(
		&c.Rows, &c.DistinctIDs, &c.DistinctSeqs, &c.DuplicateSeqs, &c.Outbox, &c.DeadLetters))
	return c
}

// storedPerBatch returns the number of stored events of each batch of action.
func storedPerBatch(t testing.TB, pool *pgxpool.Pool, workspace, action string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := pool.Query(ctx, sqlStoredPerBatch, workspace, action)
	require.NoError(t, err)
	out := map[string]int{}
	for rows.Next() {
		var b string
		var n int
		require.NoError(t, rows.Scan(&b, &n))
		out[b] = n
	}
	require.NoError(t, rows.Err())
	return out
}

// storedOf counts the stored events among ids.
func storedOf(t testing.TB, pool *pgxpool.Pool, ids []string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var n int
	require.NoError(t, pool.QueryRow(ctx, sqlStoredOf, ids).Scan(&n))
	return n
}

// requireExactlyOnce asserts that the workspace's events of action are
// exactly the events of batches, each stored once, each batch whole, with
// unique seqs, nothing left in the outbox, no dead letters, and the
// workspace's chain verifies.
func requireExactlyOnce(t testing.TB, pool *pgxpool.Pool, workspace, action string, batches []batch) {
	t.Helper()
	want := map[string]int{}
	var ids []string
	for _, b := range batches {
		require.NotContains(t, want, b.ID, "batch %s listed twice", b.ID)
		want[b.ID] = len(b.Events)
		ids = append(ids, b.IDs()...)
	}
	got := storedPerBatch(t, pool, workspace, action)
	for id, n := range want {
		require.Equal(t, n, got[id], "batch %s: stored events", id)
	}
	for id, n := range got {
		require.Contains(t, want, id, "batch %s (%d events) stored but never sent", id, n)
	}
	require.Equal(t, len(ids), storedOf(t, pool, ids), "stored events among the ids sent")
	c := countStore(t, pool, workspace)
	require.Equal(t, c.Rows, c.DistinctIDs, "an id is stored twice: %+v", c)
	require.Equal(t, c.Rows, c.DistinctSeqs, "a seq is used twice in the workspace: %+v", c)
	require.Zero(t, c.DuplicateSeqs, "a seq is used twice: %+v", c)
	require.Zero(t, c.Outbox, "outbox not empty: %+v", c)
	require.Zero(t, c.DeadLetters, "dead letters: %+v", c)
	// And the workspace's hash chain is whole: every stored event linked
	// to the one committed before it, through kills and restarts.
	rep, err := integrity.VerifyWorkspace(t.Context(), pool, workspace, nil)
	require.NoError(t, err)
	require.True(t, rep.OK(), "chain of %s broken: %+v", workspace, rep.Break)
	require.Equal(t, c.Rows, rep.Events, "events on the chain of %s", workspace)
}

// createEmptyDatabase creates a database with no schema at all on the test
// server (testdb's are migrated) and drops it at cleanup.
func createEmptyDatabase(t testing.TB) string {
	t.Helper()
	admin := testdb.AdminURL(t)
	var b [6]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	name := fmt.Sprintf("auditlog_e2e_%d_%s", time.Now().Unix(), hex.EncodeToString(b[:]))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, adminExec(ctx, admin, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()+` TEMPLATE template0 ENCODING 'UTF8'`))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := adminExec(ctx, admin, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	require.NoError(t, err)
	u.Path = "/" + name
	return u.String()
}

// adminExec runs one statement on a connection of its own.
func adminExec(ctx context.Context, dbURL, stmt string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, stmt)
	return err
}

// sqlCopiesRunning counts the COPY statements running for application_name
// $1 in the current database.
const sqlCopiesRunning = `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1
  AND state = 'active' AND query LIKE 'COPY%'`

func copiesRunning(ctx context.Context, pool *pgxpool.Pool, app string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var n int
	err := pool.QueryRow(ctx, sqlCopiesRunning, app).Scan(&n)
	return n, err
}

// sqlExportEvents lists the details of the workspace's audit_log.export
// events, oldest first.
// sqlExportEvents lists export events in the order they were recorded.
// Not by seq: the relay claims outbox rows FOR UPDATE SKIP LOCKED, so a row
// still locked by a killed instance's move (its backend finishing the
// statement it was running) is moved after rows written later.
const sqlExportEvents = `
SELECT details FROM audit_events
WHERE workspace_id = $1 AND action = 'audit_log.export'
ORDER BY occurred_at, seq`

// exportEventsDebug lists the workspace's export events with their seq,
// times and details, one per line, for a failure message.
func exportEventsDebug(t testing.TB, pool *pgxpool.Pool, workspace string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := pool.Query(ctx, sqlExportEventsDebug, workspace)
	if err != nil {
		return err.Error()
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err.Error()
	}
	return strings.Join(lines, "\n")
}

const sqlExportEventsDebug = `
SELECT concat_ws(' ', seq, occurred_at, recorded_at, request_id, details) FROM audit_events
WHERE workspace_id = $1 AND action = 'audit_log.export'
ORDER BY seq`

// exportEvents returns the details of the workspace's export events.
func exportEvents(t testing.TB, pool *pgxpool.Pool, workspace string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := pool.Query(ctx, sqlExportEvents, workspace)
	require.NoError(t, err)
	var out []map[string]any
	for rows.Next() {
		var raw []byte
		require.NoError(t, rows.Scan(&raw))
		var d map[string]any
		require.NoError(t, json.Unmarshal(raw, &d))
		out = append(out, d)
	}
	require.NoError(t, rows.Err())
	return out
}
