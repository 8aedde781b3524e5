package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// TestGracefulLifecycle runs three services one after another on one
// database, each stopped by a signal while an export streams to a client:
//
//  1. SIGTERM with the default grace: the listener closes at once (new
//     connections are refused), the export in flight still completes, and
//     the components stop in order — HTTP, modules, export sweep, relay,
//     partition maintenance, database — before a clean exit.
//  2. SIGTERM with http.shutdown_grace=1s and a client that stopped
//     reading: the export is cut at the grace period, still records itself
//     (with its row count) before the database closes, and the process
//     exits cleanly.
//  3. SIGTERM, then a second SIGTERM during the drain: the process exits at
//     once with status 143. The export it abandoned is recorded by the next
//     start's sweep.
func TestGracefulLifecycle(t *testing.T) {
	t.Parallel()
	const (
		workspace  = "ws_lifecycle"
		seedAction = "e2e.seed"
		// Enough rows that an export is still streaming while the client
		// holds back: ~18 MB of CSV, far more than the socket buffers hold.
		seedRows = 60_000
	)
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 3)
	key := createKey(t, pool, workspace)
	c := newClient(t, key)
	info := map[string]string{"AUDITLOG_LOG_LEVEL": "info"}

	first := startService(t, "drain", dbURL, info)
	seedViaAPI(t, c, first.URL(""), seedAction, seedRows)
	// The subtests' services, whose logs explain a wrong export record
	// below (their own cleanup logs them only if their subtest failed).
	var cut []*service
	waitDrained(t, pool, drainTimeout)

	t.Run("drain completes the export, then stops in order", func(t *testing.T) {
		exp := openExport(t, c, first.URL("/v1/events/export"))
		defer exp.Body.Close()
		head := make([]byte, 64<<10)
		_, err := io.ReadFull(exp.Body, head)
		require.NoError(t, err)

		require.NoError(t, syscall.Kill(first.PID(), syscall.SIGTERM))
		waitFor(t, "the listener to close", 10*time.Second, func() (bool, error) {
			return refusesConnections(first), nil
		})
		require.True(t, first.Running(), "the process waits for the export in flight")

		rest, err := io.ReadAll(exp.Body)
		require.NoError(t, err, "the export in flight completes")
		lines := countLines(append(head, rest...))
		require.Equal(t, seedRows+1, lines, "header and every row")

		waitExit(t, first, stopTimeout)
		require.NoError(t, first.exitErr(), "clean exit")

		msgs := logMessages(t, first)
		requireInOrder(t, msgs,
			"auditlog: signal received; stopping gracefully (send it again to exit at once)",
			"auditlog: shutting down",
			"events: export done",
			"auditlog: stopped http",
			"auditlog: stopped modules",
			"auditlog: stopped export_sweep",
			"relay: stopped",
			"auditlog: stopped relay",
			"auditlog: stopped partition_maintenance",
			"auditlog: stopped database",
			"auditlog: shutdown complete",
		)
	})

	t.Run("grace period cuts a stalled export, which still records itself", func(t *testing.T) {
		svc := startService(t, "grace", dbURL, map[string]string{
			"AUDITLOG_LOG_LEVEL": "info", "AUDITLOG_HTTP_SHUTDOWN_GRACE": "1s",
		})
		cut = append(cut, svc)
		exp := openExport(t, c, svc.URL("/v1/events/export"))
		defer exp.Body.Close()
		_, err := io.ReadFull(exp.Body, make([]byte, 64<<10))
		require.NoError(t, err)

		began := time.Now()
		require.NoError(t, syscall.Kill(svc.PID(), syscall.SIGTERM))
		waitExit(t, svc, 20*time.Second)
		require.NoError(t, svc.exitErr(), "clean exit after cutting the export")
		t.Logf("stopped %s after SIGTERM with a 1s grace", time.Since(began).Round(time.Millisecond))

		_, err = io.ReadAll(exp.Body)
		require.Error(t, err, "the client sees a cut transfer, not a clean end")
		msgs := logMessages(t, svc)
		requireInOrder(t, msgs,
			"auditlog: shutting down",
			"auditlog: draining HTTP within shutdown_grace failed; cut the requests left",
			"auditlog: stopped http",
			"auditlog: stopped database",
		)
		require.Empty(t, svc.LogLines("recording export event failed"), "the cut export recorded itself")
	})

	t.Run("a second signal exits at once", func(t *testing.T) {
		svc := startService(t, "second-signal", dbURL, map[string]string{
			"AUDITLOG_LOG_LEVEL": "info", "AUDITLOG_HTTP_SHUTDOWN_GRACE": "1m",
		})
		cut = append(cut, svc)
		exp := openExport(t, c, svc.URL("/v1/events/export"))
		defer exp.Body.Close()
		_, err := io.ReadFull(exp.Body, make([]byte, 64<<10))
		require.NoError(t, err)

		require.NoError(t, syscall.Kill(svc.PID(), syscall.SIGTERM))
		waitFor(t, "the graceful stop to begin", 10*time.Second, func() (bool, error) {
			return len(svc.LogLines("auditlog: shutting down")) == 1, nil
		})
		time.Sleep(200 * time.Millisecond)
		require.True(t, svc.Running(), "still draining the stalled export (grace 1m)")

		began := time.Now()
		require.NoError(t, syscall.Kill(svc.PID(), syscall.SIGTERM))
		waitExit(t, svc, 5*time.Second)
		t.Logf("exited %s after the second signal", time.Since(began).Round(time.Millisecond))
		var exitErr *exec.ExitError
		require.ErrorAs(t, svc.exitErr(), &exitErr)
		require.Equal(t, 128+int(syscall.SIGTERM), exitErr.ExitCode())
		require.Len(t, svc.LogLines("auditlog: second signal; exiting at once", `"exit_code":143`), 1)
		require.Empty(t, svc.LogLines("auditlog: shutdown complete"))
	})

	// The next start sweeps up the export the forced exit abandoned; every
	// export is then on record: complete; cut, with its rows; abandoned.
	last := startService(t, "after", dbURL, info)
	waitFor(t, "three export events", time.Minute, func() (bool, error) {
		return len(exportEvents(t, pool, workspace)) == 3, nil
	})
	evs := exportEvents(t, pool, workspace)
	defer func() {
		if !t.Failed() {
			return
		}
		for _, s := range cut {
			t.Logf("%s log (tail):\n%s", s.name, s.LogTail(80))
		}
		t.Logf("export events by seq:\n%s", exportEventsDebug(t, pool, workspace))
	}()
	require.Equal(t, true, evs[0]["complete"])
	require.EqualValues(t, seedRows, evs[0]["rows"])
	require.Equal(t, false, evs[1]["complete"])
	require.NotNil(t, evs[1]["rows"], "the cut export recorded itself, with its row count")
	require.Equal(t, false, evs[2]["complete"])
	require.Nil(t, evs[2]["rows"], "recorded by the sweep, which cannot know the rows")

	// The container HEALTHCHECK command: 0 while the server answers, not
	// after it stopped.
	out, err := healthcheck(last, "--path", "/readyz")
	require.NoError(t, err, "%s", out)
	require.Contains(t, out, `{"status":"ready"}`)
	require.NoError(t, last.Stop())
	out, err = healthcheck(last)
	require.Error(t, err, "healthcheck of a stopped server: %s", out)
}

// healthcheck runs `auditlog healthcheck` with s's settings.
func healthcheck(s *service, args ...string) (string, error) {
	cmd := exec.Command(binPath, append([]string{"healthcheck"}, args...)...)
	cmd.Dir = s.dir
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// refusesConnections reports whether a new connection to s is refused.
func refusesConnections(s *service) bool {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(s.URL("/healthz"))
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	_ = resp.Body.Close()
	return false
}

// waitExit waits for the process to exit by itself, failing the test
// (after killing it) if it has not within timeout.
func waitExit(t *testing.T, s *service, timeout time.Duration) {
	t.Helper()
	select {
	case <-s.exitedChan():
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s; log:\n%s", s.name, timeout, s.LogTail(40))
	}
}

// countLines counts the newline-terminated lines of b.
func countLines(b []byte) int { return strings.Count(string(b), "\n") }

// logMessages returns the service's JSON log lines as "msg" (and
// "msg component" for "auditlog: stopped"), in order.
func logMessages(t *testing.T, s *service) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.Log()))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var rec struct {
			Msg       string `json:"msg"`
			Component string `json:"component"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil {
			continue // the harness's "=== start" lines
		}
		if rec.Component != "" {
			rec.Msg += " " + rec.Component
		}
		out = append(out, rec.Msg)
	}
	require.NoError(t, sc.Err())
	return out
}

// requireInOrder checks that want occur in msgs in this order (other
// messages may come between).
func requireInOrder(t *testing.T, msgs []string, want ...string) {
	t.Helper()
	i := 0
	for _, m := range msgs {
		if i < len(want) && m == want[i] {
			i++
		}
	}
	require.Equal(t, len(want), i, "log messages out of order or missing: found %q, next expected %q; log:\n%s",
		want[:i], want[min(i, len(want)-1)], strings.Join(msgs, "\n"))
}
