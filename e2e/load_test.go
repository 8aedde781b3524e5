package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// TestSustainedLoad is the always-run, 20-second version of the soak
// TestSoakSustainedLoad. Not parallel: it runs alone, so its bounds are not
// fighting the other tests for two cores.
func TestSustainedLoad(t *testing.T) {
	runLoad(t, loadParams{
		Duration:        20 * time.Second,
		EventsPerSecond: 1000,
		BatchSize:       100,
		QueryEvery:      250 * time.Millisecond,
		ExportEvery:     2 * time.Second,
		// Alone it stays in milliseconds; CI shares two cores and one
		// PostgreSQL with other packages' tests, which can stall it for
		// seconds (3.8s seen next to the 1M-row backlog test).
		MaxOutboxAge: 10 * time.Second,
		MaxRSSGrowth: 64 << 20,
	})
}

// loadParams shape one sustained-load run.
type loadParams struct {
	// Duration of the load (bounded; the run ends then whatever happens).
	Duration time.Duration
	// EventsPerSecond ingested, in batches of BatchSize, paced evenly.
	EventsPerSecond int
	BatchSize       int
	// QueryEvery and ExportEvery pace the concurrent readers. Exports take
	// the last ten seconds of events (from=now-10s), read to the end.
	QueryEvery  time.Duration
	ExportEvery time.Duration
	// MaxOutboxAge bounds the age of the oldest outbox row at any sample
	// (the relay lag).
	MaxOutboxAge time.Duration
	// MaxRSSGrowth bounds the service's RSS growth from the end of the
	// warm-up (the highest sample of the run's second fifth) to the highest
	// sample of its last fifth.
	MaxRSSGrowth int64
}

// loadSample is one second of the run as observed from outside.
type loadSample struct {
	at          time.Duration
	depth       int64
	oldestAge   float64 // seconds
	rss         int64
	goroutines  float64
	sampleError error
}

const sqlOutboxLag = `
SELECT count(*), coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8 FROM audit_outbox`

// runLoad runs the service under steady ingest with concurrent queries and
// exports, samples the outbox and the process every second, and asserts:
// zero errors (every answer 2xx, nothing cut), the outbox lag bounded, RSS
// flat within a bound, and afterwards every accepted event stored once.
func runLoad(t *testing.T, p loadParams) {
	const (
		workspace = "ws_load"
		action    = "e2e.load"
	)
	ctx := context.Background()
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 3)
	key := createKey(t, pool, workspace)
	svc := startService(t, "auditlog", dbURL, map[string]string{"AUDITLOG_DATABASE_MAX_CONNS": "8"})
	c := newClient(t, key)
	started := time.Now()
	t.Logf("load started %s: %d events/s in batches of %d for %s, a query every %s, an export every %s",
		started.UTC().Format(time.RFC3339), p.EventsPerSecond, p.BatchSize, p.Duration, p.QueryEvery, p.ExportEvery)

	run := startIngest(c, ingestOptions{
		Targets: []string{svc.URL("")}, Workers: 4, BatchSize: p.BatchSize, Action: action,
		BatchesPerSecond: float64(p.EventsPerSecond) / float64(p.BatchSize),
	})

	stop := make(chan struct{})
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		readErrs            []string
		queries, exports    int
		exportRows          int
		queryLat, exportLat []time.Duration
		samples             []loadSample
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(readErrs) < 20 {
			readErrs = append(readErrs, fmt.Sprintf(format, args...))
		}
	}
	every := func(d time.Duration, fn func()) {
		wg.Go(func() {
			tick := time.NewTicker(d)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					fn()
				}
			}
		})
	}
	queryPaths := []string{
		"/v1/events?limit=100",
		"/v1/events?limit=50&action=e2e.*",
		"/v1/events?limit=20&source=api&actor_id=e2e-loadgen",
	}
	every(p.QueryEvery, func() {
		mu.Lock()
		path := queryPaths[queries%len(queryPaths)]
		mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		a := c.get(rctx, svc.URL(""), path)
		cancel()
		if a.Status != http.StatusOK {
			fail("query %s: %s", path, a)
			return
		}
		mu.Lock()
		queries++
		queryLat = append(queryLat, a.Elapsed)
		mu.Unlock()
	})
	every(p.ExportEvery, func() {
		from := time.Now().Add(-10 * time.Second).UTC().Format(time.RFC3339)
		path := "/v1/events/export?from=" + url.QueryEscape(from)
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		began := time.Now()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, svc.URL(path), nil)
		if err != nil {
			fail("export: %v", err)
			return
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := c.http.Do(req)
		if err != nil {
			fail("export: %v", err)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			fail("export: %d after %d bytes: %v", resp.StatusCode, len(body), err)
			return
		}
		rows := 0
		for _, b := range body {
			if b == '\n' {
				rows++
			}
		}
		mu.Lock()
		exports++
		exportRows += rows - 1
		exportLat = append(exportLat, time.Since(began))
		mu.Unlock()
	})
	every(time.Second, func() {
		s := loadSample{at: time.Since(started)}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := pool.QueryRow(sctx, sqlOutboxLag).Scan(&s.depth, &s.oldestAge); err != nil {
			s.sampleError = err
		}
		if rss, err := svc.RSS(); err != nil {
			s.sampleError = err
		} else {
			s.rss = rss
		}
		if m, err := svc.Metrics(sctx); err == nil {
			s.goroutines = m.Value("go_goroutines")
		} else {
			s.sampleError = err
		}
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	})

	select {
	case <-time.After(p.Duration):
	case <-svc.exitedChan():
		t.Fatalf("the service died under load: %v", svc.exitErr())
	}
	close(stop)
	wg.Wait()
	attempts := run.Stop()
	elapsed := time.Since(started)
	drain := waitDrained(t, pool, drainTimeout)

	// Zero errors.
	accepted, refused := split(attempts)
	for i, a := range refused {
		if i < 5 {
			t.Errorf("ingest refused: %s", a.answer)
		}
	}
	require.Empty(t, refused, "%d of %d ingest requests were not accepted", len(refused), len(attempts))
	require.Empty(t, readErrs, "query/export errors")
	require.Positive(t, queries)
	require.Positive(t, exports)
	var sent []batch
	for _, a := range accepted {
		sent = append(sent, a.Batch)
	}
	requireExactlyOnce(t, pool, workspace, action, sent)
	require.Empty(t, svc.LogLines(`"level":"ERROR"`), "the service logged errors")

	// Lag and memory.
	var maxDepth int64
	var maxAge float64
	var rss []int64
	for _, s := range samples {
		require.NoError(t, s.sampleError, "sample at %s", s.at)
		maxDepth = max(maxDepth, s.depth)
		maxAge = max(maxAge, s.oldestAge)
		rss = append(rss, s.rss)
	}
	require.GreaterOrEqual(t, len(rss), 10, "samples")
	fifth := len(rss) / 5
	warm := slices.Max(rss[fifth : 2*fifth])
	end := slices.Max(rss[len(rss)-fifth:])
	growth := end - warm
	ingestLat := make([]time.Duration, 0, len(accepted))
	for _, a := range accepted {
		ingestLat = append(ingestLat, a.Elapsed)
	}
	t.Logf("load: %s, %d events accepted (%.0f/s, %d paced requests missed by the client), %d queries, "+
		"%d exports (%d rows); outbox max depth %d, max oldest age %.3fs; drained %s after the load; "+
		"ingest latency p50 %s p99 %s max %s; query p50 %s p99 %s; export p50 %s max %s",
		elapsed.Round(time.Millisecond), acceptedEvents(accepted), float64(acceptedEvents(accepted))/elapsed.Seconds(),
		run.Missed(), queries, exports, exportRows, maxDepth, maxAge, drain.Round(time.Millisecond),
		pct(ingestLat, 50), pct(ingestLat, 99), pct(ingestLat, 100), pct(queryLat, 50), pct(queryLat, 99),
		pct(exportLat, 50), pct(exportLat, 100))
	t.Logf("service RSS: first %.1f MiB, after warm-up %.1f MiB, last fifth max %.1f MiB (growth %+.1f MiB), max %.1f MiB; "+
		"goroutines first %v last %v",
		mib(rss[0]), mib(warm), mib(end), mib(growth), mib(slices.Max(rss)),
		samples[0].goroutines, samples[len(samples)-1].goroutines)
	require.Less(t, maxAge, p.MaxOutboxAge.Seconds(), "outbox lag (age of the oldest row)")
	require.Less(t, growth, p.MaxRSSGrowth, "RSS growth after warm-up")
}

// pct returns the q-th percentile of ds (100: the max).
func pct(ds []time.Duration, q int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(len(s)-1, (len(s)*q)/100)
	return s[i].Round(time.Millisecond)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
