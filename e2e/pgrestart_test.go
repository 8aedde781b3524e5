package e2e

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/app/embeddedpg"
)

// Bounds of the PostgreSQL restart test.
const (
	// outageAnswerBound: while the database is down, an ingest request must
	// be answered (503) within this.
	outageAnswerBound = 10 * time.Second
	// recoverBound: after the database is back, /readyz must be 200 and
	// ingest must accept again within this (the relay backs off up to 5s).
	recoverBound = 30 * time.Second
	// outageHold is how long the database stays down.
	outageHold = 3 * time.Second
)

// TestPostgresRestart: a private PostgreSQL cluster is stopped (fast
// shutdown) and started again while clients ingest, the relay moves and an
// export streams. While it is down, ingest answers 503 "unavailable" quickly
// and /readyz is 503; the export already streaming is cut (the client sees a
// broken transfer, not a clean end); nothing is half-written. Once it is
// back, the same service process recovers by itself: /readyz 200, ingest
// 202, the relay drains, and after resending what was refused every event
// is stored exactly once.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	const (
		workspace  = "ws_pgrestart"
		action     = "e2e.pgrestart"
		seedAction = "e2e.seed"
		seedRows   = 60_000
	)
	ctx := context.Background()
	pgCfg := embeddedpg.Config{
		DataDir: filepath.Join(t.TempDir(), "pg"),
		Port:    freePort(t),
		Logger:  slog.New(slog.DiscardHandler),
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cluster, err := embeddedpg.Start(startCtx, pgCfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cluster.Stop(ctx); err != nil {
			t.Errorf("stopping the test cluster: %v", err)
		}
	})

	svc := startService(t, "auditlog", cluster.URL(), map[string]string{"AUDITLOG_RELAY_BATCH_SIZE": "500"})
	pool := openPool(t, cluster.URL(), 3)
	key := createKey(t, pool, workspace)
	c := newClient(t, key)

	// Enough rows that the export is still streaming when the database
	// stops: ~18 MB of CSV, far more than the socket buffers hold.
	seed := seedViaAPI(t, c, svc.URL(""), seedAction, seedRows)
	waitDrained(t, pool, drainTimeout)

	run := startIngest(c, ingestOptions{
		Targets: []string{svc.URL("")}, Workers: 3, BatchSize: 50, Action: action, Pause: 20 * time.Millisecond,
	})
	waitFor(t, "ingest flowing", time.Minute, func() (bool, error) { return acceptedEvents(run.Attempts()) >= 500, nil })

	// An export reads a little, then stalls: the server is blocked writing
	// to us with the COPY running.
	exp := openExport(t, c, svc.URL("/v1/events/export"))
	defer exp.Body.Close()
	head := make([]byte, 64<<10)
	_, err = io.ReadFull(exp.Body, head)
	require.NoError(t, err)
	waitFor(t, "the export's COPY to run", 10*time.Second, func() (bool, error) {
		n, err := copiesRunning(ctx, pool, "auditlog")
		return n == 1, err
	})

	// The outage.
	stopCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	require.NoError(t, cluster.Stop(stopCtx))
	down := time.Now()

	readyDown := waitFor(t, "/readyz to report the outage", outageAnswerBound, func() (bool, error) {
		a := c.get(ctx, svc.URL(""), "/readyz")
		return a.Status == http.StatusServiceUnavailable && a.Code == "unavailable", nil
	})
	// Hold the outage for a while so ingest, the relay's backoff and the
	// pool all live through it.
	waitFor(t, "ingest answers during the outage", 30*time.Second, func() (bool, error) {
		n := 0
		for _, a := range run.Attempts() {
			if a.Start.After(down) {
				n++
			}
		}
		return n >= 10 && time.Since(down) >= outageHold, nil
	})
	probeBatch := newBatch(action+".probe", 10)
	probe := c.post(ctx, svc.URL(""), probeBatch)
	require.Equal(t, http.StatusServiceUnavailable, probe.Status, "ingest while the database is down: %s", probe)
	require.Equal(t, "unavailable", probe.Code, "ingest while the database is down: %s", probe)
	require.Less(t, probe.Elapsed, outageAnswerBound)
	t.Logf("while down: /readyz 503 after %s; ingest %d %q %q in %s",
		readyDown.Round(time.Millisecond), probe.Status, probe.Code, probe.Message, probe.Elapsed.Round(time.Millisecond))

	// The export that was streaming must not read as complete.
	rest, copyErr := io.Copy(io.Discard, exp.Body)
	require.Error(t, copyErr, "an export cut by the outage must not end like a complete file")
	cutBytes := int64(len(head)) + rest
	t.Logf("export cut by the outage: read %d bytes, then %v", cutBytes, copyErr)

	// The database comes back; the same service process recovers.
	restartCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// Requests may succeed as soon as the server accepts connections, which
	// is before Start returns: the outage ends when Start is called.
	up := time.Now()
	cluster, err = embeddedpg.Start(restartCtx, pgCfg)
	require.NoError(t, err)
	// The test's own pool holds connections the restart killed.
	pool = openPool(t, cluster.URL(), 3)
	outage := up.Sub(down)
	svc.WaitReady(recoverBound)
	readyAfter := time.Since(up)
	waitFor(t, "ingest to accept again", recoverBound, func() (bool, error) {
		for _, a := range run.Attempts() {
			if a.Start.After(up) && a.accepted() {
				return true, nil
			}
		}
		return false, nil
	})
	attempts := run.Stop()
	require.True(t, svc.Running(), "the service must survive the outage")
	// The relay recovers by itself: its backoff is capped at 5s.
	drainAfter := waitDrained(t, pool, recoverBound)
	t.Logf("database down for %s; /readyz 200 %s after the restart began; outbox drained %s after ingest stopped",
		outage.Round(time.Millisecond), readyAfter.Round(time.Millisecond), drainAfter.Round(time.Millisecond))

	// Every answer was a 202 or a 503 "unavailable"; those during the
	// outage were 503s, and prompt.
	accepted, refused := split(attempts)
	var refusedDuring, refusedAround int
	for _, a := range attempts {
		end := a.Start.Add(a.Elapsed)
		switch a.Status {
		case http.StatusAccepted:
			require.Empty(t, a.Mismatch)
			require.False(t, a.Start.After(down) && end.Before(up), "accepted while the database was down: %s", a.answer)
		case http.StatusServiceUnavailable:
			require.Equal(t, "unavailable", a.Code, "%s", a.answer)
			require.Less(t, a.Elapsed, outageAnswerBound, "%s", a.answer)
			if a.Start.After(down) && end.Before(up) {
				refusedDuring++
			} else {
				refusedAround++
			}
		default:
			t.Fatalf("ingest answered neither 202 nor 503: %s", a.answer)
		}
	}
	t.Logf("ingest: %d batches accepted, %d refused with 503 during the outage, %d around its edges",
		len(accepted), refusedDuring, refusedAround)

	// Nothing half-written: each refused batch is stored whole (its COMMIT
	// got through before the connection died) or not at all.
	per := storedPerBatch(t, pool, workspace, action)
	committed := 0
	for _, a := range refused {
		n := per[a.Batch.ID]
		require.True(t, n == 0 || n == len(a.Batch.Events), "batch %s half-written: %d of %d", a.Batch.ID, n, len(a.Batch.Events))
		if n > 0 {
			committed++
		}
	}
	for _, a := range accepted {
		require.Equal(t, len(a.Batch.Events), per[a.Batch.ID], "accepted batch %s", a.Batch.ID)
	}
	t.Logf("%d of %d refused batches had in fact committed (ambiguous COMMIT); resending all", committed, len(refused))

	for _, a := range refused {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		ans := c.post(rctx, svc.URL(""), a.Batch)
		cancel()
		require.True(t, ans.accepted(), "resending %s: %s", a.Batch.ID, ans)
	}
	waitDrained(t, pool, drainTimeout)
	var sent []batch
	for _, a := range attempts {
		sent = append(sent, a.Batch)
	}
	requireExactlyOnce(t, pool, workspace, action, sent)
	require.Zero(t, storedOf(t, pool, probeBatch.IDs()), "the probe refused during the outage must not be stored")
	requireExactlyOnce(t, pool, workspace, seedAction, seed)

	m, err := svc.Metrics(ctx)
	require.NoError(t, err)
	t.Logf("relay errors during the outage: %v; HTTP 5xx: %v (all 503)", m.Value("auditlog_relay_errors_total"),
		m.Matching("auditlog_http_requests_total", `status="5`))
	require.Zero(t, m.Matching("auditlog_http_requests_total", `status="500"`), "no 500 for a database outage")

	// The pool serves reads again: a query and a complete export.
	q := c.get(ctx, svc.URL(""), "/v1/events?limit=10&action="+action)
	require.Equal(t, http.StatusOK, q.Status, "%s", q)
	full := c.get(ctx, svc.URL(""), "/v1/events/export?action="+seedAction)
	require.NoError(t, full.Err)
	require.Equal(t, http.StatusOK, full.Status, "%s", full)
	require.Equal(t, seedRows, bytes.Count(full.Body, []byte("\n"))-1, "rows of a complete export after recovery")
	require.Less(t, cutBytes, int64(len(full.Body)), "the cut export was shorter than the whole")

	// What became of the export cut by the outage: its audit_log.export
	// event is written after the stream ends, when the database was gone.
	waitDrained(t, pool, drainTimeout)
	t.Logf("export events recorded: %v; service log about the cut export: %q",
		exportEvents(t, pool, workspace), svc.LogLines("export"))
}

// openExport starts GET url (an export) and checks it began as a CSV.
func openExport(t testing.TB, c *client, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := c.http.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/csv; charset=utf-8", resp.Header.Get("Content-Type"))
	return resp
}

// seedViaAPI ingests n events of action in batches of 1000 with two
// workers, requiring a 202 for each, and returns the batches.
func seedViaAPI(t testing.TB, c *client, baseURL, action string, n int) []batch {
	t.Helper()
	const size = 1000
	batches := make(chan batch)
	var (
		mu   sync.Mutex
		sent []batch
		errs []string
		wg   sync.WaitGroup
	)
	for range 2 {
		wg.Go(func() {
			for b := range batches {
				ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
				a := c.post(ctx, baseURL, b)
				cancel()
				mu.Lock()
				sent = append(sent, b)
				if !a.accepted() {
					errs = append(errs, a.String())
				}
				mu.Unlock()
			}
		})
	}
	for left := n; left > 0; left -= size {
		batches <- newBatch(action, min(size, left))
	}
	close(batches)
	wg.Wait()
	require.Empty(t, errs, "seeding")
	return sent
}
