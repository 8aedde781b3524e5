package events

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// TestInterruptedExportIsRecordedBySweep: an export whose process or
// connection died before recording its event (intent written, session
// gone) is recorded by the sweep as incomplete with an unknown row count;
// an export still running is left alone.
func TestInterruptedExportIsRecordedBySweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	count := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_export_intents`).Scan(&n))
		return n
	}

	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	released := false
	t.Cleanup(func() {
		if !released {
			conn.Release() // else the pool's Close waits for it forever
		}
	})
	f, err := ParseFilters(map[string][]string{"action": {"ticket.*"}})
	require.NoError(t, err)
	_, err = beginIntent(ctx, conn.Conn(), exportIntent{
		WS:      "ws_a",
		Actor:   outbox.Actor{Type: outbox.ActorAPIKey, ID: "key_1", Name: "auditor"},
		Info:    outbox.RequestInfo{Source: "api", IP: "198.51.100.9", RequestID: "req_9"},
		Filters: exportFilters(f),
	})
	require.NoError(t, err)
	require.Equal(t, 1, count())

	n, err := SweepInterruptedExports(ctx, pool, rec)
	require.NoError(t, err)
	require.Equal(t, 0, n, "a running export (its session holds the lock) is not swept")

	// The exporting connection dies, as with a crash or a database restart.
	require.NoError(t, conn.Conn().Close(ctx))
	conn.Release()
	released = true

	// The server ends the closed session (and frees its lock) shortly
	// after the client hangs up.
	waitFor(t, "the dead export to be swept", 10*time.Second, func() bool {
		n, err = SweepInterruptedExports(ctx, pool, rec)
		require.NoError(t, err)
		require.LessOrEqual(t, n, 1)
		return n == 1
	})
	require.Equal(t, 0, count())
	recs := exportEvents(t, pool)
	require.Len(t, recs, 1)
	require.Equal(t, false, recs[0].Details["complete"])
	require.Nil(t, recs[0].Details["rows"], "the row count of a crashed export is unknown, not invented")
	var ip, actorID, reqID string
	require.NoError(t, pool.QueryRow(ctx, `SELECT host(ip), actor_id, request_id FROM audit_outbox WHERE action = 'audit_log.export'`).
		Scan(&ip, &actorID, &reqID))
	require.Equal(t, "198.51.100.9", ip)
	require.Equal(t, "key_1", actorID)
	require.Equal(t, "req_9", reqID)

	n, err = SweepInterruptedExports(ctx, pool, rec)
	require.NoError(t, err)
	require.Equal(t, 0, n, "recorded once")
}

// TestExportLeavesNoIntent: complete and client-interrupted exports record
// their event in the handler and leave no intent for the sweep.
func TestExportLeavesNoIntent(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	bulkInsert(t, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 10, 50_000)

	resp, client, srv := startExport(t, pool)
	require.NoError(t, resp.Body.Close()) // interrupted
	waitFor(t, "the export event", 10*time.Second, func() bool { return len(exportEvents(t, pool)) == 1 })

	r2, err := client.Get(srv.URL + "/v1/events/export")
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, r2.Body)
	require.NoError(t, err)
	require.NoError(t, r2.Body.Close())
	require.Equal(t, http.StatusOK, r2.StatusCode)
	waitFor(t, "both export events", 10*time.Second, func() bool { return len(exportEvents(t, pool)) == 2 })

	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_export_intents`).Scan(&n))
	require.Equal(t, 0, n)
	swept, err := SweepInterruptedExports(context.Background(), pool, outbox.Default())
	require.NoError(t, err)
	require.Equal(t, 0, swept)
}
