package e2e

import (
	"context"
	"io/fs"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/migrations"
)

// TestTwoInstances: two services started at the same moment on one empty
// database. Migrations are applied once; ingest to both while both relays
// run stores every event exactly once and no outbox row is moved twice;
// partition maintenance on a one-second schedule runs on both without
// conflicts, creating each partition once.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	const (
		workspace = "ws_two"
		action    = "e2e.two"
		// Scheduled maintenance runs each instance must have made.
		minRuns = 3
	)
	ctx := context.Background()
	dbURL := createEmptyDatabase(t)
	settings := map[string]string{
		"AUDITLOG_RELAY_BATCH_SIZE": "100",
		// Daily partitions over 30 days: ~35 partitions, more than one
		// maintenance transaction creates (32), on a schedule that fires
		// every second on both instances.
		"AUDITLOG_RETENTION_SCHEDULE":           "@every 1s",
		"AUDITLOG_RETENTION_PARTITION_INTERVAL": "day",
		"AUDITLOG_RETENTION_DAYS":               "30",
		"AUDITLOG_RETENTION_PREMAKE":            "3",
		// Debug shows the scheduled runs and the advisory-lock skips.
		"AUDITLOG_LOG_LEVEL": "debug",
	}
	a := newService(t, "instance-a", dbURL, settings)
	b := newService(t, "instance-b", dbURL, settings)
	a.Start()
	b.Start()
	a.WaitReady(readyTimeout)
	b.WaitReady(readyTimeout)

	pool := openPool(t, dbURL, 3)

	// Each migration applied once.
	files, err := fs.Glob(migrations.FS(), "*.sql")
	require.NoError(t, err)
	rows, err := pool.Query(ctx, `SELECT version_id, count(*) FROM goose_db_version WHERE version_id > 0 GROUP BY version_id ORDER BY version_id`)
	require.NoError(t, err)
	applied := map[int64]int{}
	for rows.Next() {
		var v int64
		var n int
		require.NoError(t, rows.Scan(&v, &n))
		applied[v] = n
	}
	require.NoError(t, rows.Err())
	// The binary was built from the same tree; >= because a migration added
	// while this test binary was compiled shows up only in the other.
	require.GreaterOrEqual(t, len(applied), len(files), "migration versions recorded: %v", applied)
	for v := int64(1); v <= int64(len(applied)); v++ {
		require.Equal(t, 1, applied[v], "migration %d recorded %d times (all: %v)", v, applied[v], applied)
	}

	key := createKey(t, pool, workspace)
	c := newClient(t, key)
	run := startIngest(c, ingestOptions{
		Targets: []string{a.URL(""), b.URL("")}, Workers: 4, BatchSize: 50, Action: action, Pause: 10 * time.Millisecond,
	})
	waitFor(t, "scheduled partition maintenance on both instances", 60*time.Second, func() (bool, error) {
		return len(a.LogLines("partitions: cron run")) >= minRuns && len(b.LogLines("partitions: cron run")) >= minRuns, nil
	})
	attempts := run.Stop()
	accepted, refused := split(attempts)
	require.Empty(t, refused, "every ingest request must be accepted")
	waitDrained(t, pool, drainTimeout)
	var sent []batch
	for _, at := range accepted {
		sent = append(sent, at.Batch)
	}
	requireExactlyOnce(t, pool, workspace, action, sent)

	ma, err := a.Metrics(ctx)
	require.NoError(t, err)
	mb, err := b.Metrics(ctx)
	require.NoError(t, err)

	// Relays: every outbox row moved once, by one of them.
	movedA, movedB := ma.Value("auditlog_relay_moved_total"), mb.Value("auditlog_relay_moved_total")
	require.Equal(t, float64(acceptedEvents(attempts)), movedA+movedB, "outbox rows moved by both relays together")
	require.Zero(t, ma.Value("auditlog_relay_dead_letters_total")+mb.Value("auditlog_relay_dead_letters_total"))

	// Partitions: each created once, by one instance, with no errors.
	var parts int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass`).Scan(&parts))
	require.GreaterOrEqual(t, parts, 34, "daily partitions of a 30-day window plus 3 ahead")
	createdA, createdB := ma.Value("auditlog_partitions_created_total"), mb.Value("auditlog_partitions_created_total")
	require.Equal(t, float64(parts), createdA+createdB, "partitions created by both instances together")
	require.Zero(t, ma.Value("auditlog_partitions_errors_total"), "instance a partition errors")
	require.Zero(t, mb.Value("auditlog_partitions_errors_total"), "instance b partition errors")

	for _, s := range []*service{a, b} {
		require.Empty(t, s.LogLines(`"level":"ERROR"`), "%s logged errors", s.name)
		for _, m := range []metrics{ma, mb} {
			require.Zero(t, m.Matching("auditlog_http_requests_total", `status="5`), "5xx answers")
		}
	}
	runsA, runsB := len(a.LogLines("partitions: cron run")), len(b.LogLines("partitions: cron run"))
	skipsA := len(a.LogLines("maintenance lock held by another instance"))
	skipsB := len(b.LogLines("maintenance lock held by another instance"))
	t.Logf("relay moved: a %v, b %v (of %d accepted); partitions: %d, created by a %v, by b %v; "+
		"scheduled runs: a %d, b %d; runs skipped on the advisory lock: a %d, b %d",
		movedA, movedB, acceptedEvents(attempts), parts, createdA, createdB, runsA, runsB, skipsA, skipsB)

	c.http.CloseIdleConnections()
	for _, s := range []*service{a, b} {
		require.NoError(t, s.Stop(), "%s: graceful stop", s.name)
		require.Empty(t, s.LogLines(`"level":"ERROR"`), "%s logged errors while stopping", s.name)
	}
}
