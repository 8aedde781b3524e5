package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api"
	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/relay"
)

// cancelBound bounds how long a departed export client may keep its COPY
// running, and the service's goroutines above their baseline.
const cancelBound = 15 * time.Second

// TestExportDisconnect: clients that read a little of a 100,000-row export
// and hang up. Each COPY stops on the server, the service's goroutines come
// back to their baseline, its connections do not pile up, it still answers
// queries and a complete export, and each cut export is recorded as
// incomplete.
func TestExportDisconnect(t *testing.T) {
	t.Parallel()
	const (
		workspace   = "ws_export"
		seedAction  = "e2e.seed"
		seedRows    = 100_000
		disconnects = 3
		maxConns    = 6
	)
	ctx := context.Background()
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 3)
	key := createKey(t, pool, workspace)
	svc := startService(t, "auditlog", dbURL, map[string]string{"AUDITLOG_DATABASE_MAX_CONNS": "6"})
	c := newClient(t, key)
	seedViaAPI(t, c, svc.URL(""), seedAction, seedRows)
	waitDrained(t, pool, drainTimeout)

	// Baseline after a warm-up of each route, with the client's
	// connections closed so none of their server goroutines count.
	warm := c.get(ctx, svc.URL(""), "/v1/events?limit=10")
	require.Equal(t, http.StatusOK, warm.Status, "%s", warm)
	warm = c.get(ctx, svc.URL(""), "/v1/events/export?action=no.such")
	require.Equal(t, http.StatusOK, warm.Status, "%s", warm)
	c.http.CloseIdleConnections()
	baseline := goroutines(t, svc)

	for i := range disconnects {
		resp := openExport(t, c, svc.URL("/v1/events/export"))
		buf := make([]byte, 64<<10)
		_, err := io.ReadFull(resp.Body, buf)
		require.NoError(t, err)
		n, err := copiesRunning(ctx, pool, "auditlog")
		require.NoError(t, err)
		require.Equal(t, 1, n, "disconnect %d: the COPY runs while the client reads", i)
		require.NoError(t, resp.Body.Close()) // unread body: the connection is closed
		took := waitFor(t, "the COPY to stop after the client left", cancelBound, func() (bool, error) {
			n, err := copiesRunning(ctx, pool, "auditlog")
			return n == 0, err
		})
		t.Logf("disconnect %d: COPY gone %s after the client closed", i, took.Round(time.Millisecond))
	}
	c.http.CloseIdleConnections()
	var now float64
	waitFor(t, "the service's goroutines back to baseline", cancelBound, func() (bool, error) {
		now = goroutines(t, svc)
		return now <= baseline+2, nil
	})
	var conns int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'auditlog'`).Scan(&conns))
	require.LessOrEqual(t, conns, maxConns)
	t.Logf("service goroutines: baseline %v, after %d disconnects %v; its database connections: %d", baseline, disconnects, now, conns)

	// Still serving: a query, and a complete export of everything stored.
	q := c.get(ctx, svc.URL(""), "/v1/events?limit=50&action=e2e.*")
	require.Equal(t, http.StatusOK, q.Status, "%s", q)
	waitDrained(t, pool, drainTimeout)
	stored := countStore(t, pool, workspace).Rows
	full := c.get(ctx, svc.URL(""), "/v1/events/export")
	require.NoError(t, full.Err)
	require.Equal(t, http.StatusOK, full.Status)
	require.Equal(t, stored, int64(bytes.Count(full.Body, []byte("\n"))-1), "rows of a complete export")

	// Every cut export was recorded, as incomplete; the warm-up and the
	// full one as complete.
	waitDrained(t, pool, drainTimeout)
	var incomplete, complete int
	for _, d := range exportEvents(t, pool, workspace) {
		switch d["complete"] {
		case false:
			incomplete++
			require.Less(t, d["rows"], float64(seedRows))
		case true:
			complete++
		}
	}
	require.Equal(t, disconnects, incomplete, "incomplete exports recorded")
	require.Equal(t, 2, complete, "complete exports recorded")
	m, err := svc.Metrics(ctx)
	require.NoError(t, err)
	require.Zero(t, m.Matching("auditlog_http_requests_total", `status="5`))
	t.Logf("auditlog_export_rows_total %v", m.Value("auditlog_export_rows_total"))
}

// goroutines reads go_goroutines from the service's /metrics.
func goroutines(t testing.TB, s *service) float64 {
	t.Helper()
	m, err := s.Metrics(context.Background())
	require.NoError(t, err)
	v, ok := m.Sum("go_goroutines")
	require.True(t, ok, "go_goroutines missing from /metrics")
	return v
}

// TestExportDisconnectInProcess is the same fault against the API server
// built in this process (api.New with the events routes), so TestMain's
// goleak check covers the export path's goroutines; the pool must get its
// connection back.
func TestExportDisconnectInProcess(t *testing.T) {
	t.Parallel()
	const workspace = "ws_export_inproc"
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testdb.NewURL(t))
	require.NoError(t, err)
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["application_name"] = "e2e-inprocess"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	log := testLogger(t)

	maint, err := partitions.New(pool, partitions.Config{RetentionDays: 365, Premake: 1, Logger: log})
	require.NoError(t, err)
	_, err = maint.Ensure(ctx)
	require.NoError(t, err)
	insertBacklog(t, pool, workspace, 50_000)
	rl, err := relay.New(pool, relay.Config{BatchSize: 10_000, Logger: log})
	require.NoError(t, err)
	_, err = rl.Drain(ctx)
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	evh, err := events.New(pool, events.Config{CSVFormulaGuard: true, Recorder: rec, Logger: log, Registerer: reg})
	require.NoError(t, err)
	srv, err := api.New(api.Config{Addr: "127.0.0.1:0"}, api.Deps{
		Pool: pool, Recorder: rec, Logger: log, Registry: reg,
		V1: []func(*gin.RouterGroup){evh.Register},
	})
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	stopped := false
	shutdown := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	}
	t.Cleanup(shutdown)

	key := createKey(t, pool, workspace)
	c := newClient(t, key)
	base := "http://" + srv.Addr()
	resp := openExport(t, c, base+"/v1/events/export")
	buf := make([]byte, 64<<10)
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	n, err := copiesRunning(ctx, pool, "e2e-inprocess")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, resp.Body.Close())

	waitFor(t, "the COPY to stop", cancelBound, func() (bool, error) {
		n, err := copiesRunning(ctx, pool, "e2e-inprocess")
		return n == 0, err
	})
	waitFor(t, "the export's connection back in the pool", cancelBound, func() (bool, error) {
		return pool.Stat().AcquiredConns() == 0, nil
	})
	q := c.get(ctx, base, "/v1/events?limit=5")
	require.Equal(t, http.StatusOK, q.Status, "%s", q)
	c.http.CloseIdleConnections()
	shutdown()

	// The cut export is recorded as incomplete once moved.
	_, err = rl.Drain(ctx)
	require.NoError(t, err)
	recs := exportEvents(t, pool, workspace)
	require.Len(t, recs, 1)
	require.Equal(t, false, recs[0]["complete"])
}
