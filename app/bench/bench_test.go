package bench

import (
	"bufio"
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// TestRunAllTiny runs every stage at tiny sizes so the command never rots:
// it checks the figures are all there, not what they are.
func TestRunAllTiny(t *testing.T) {
	t.Parallel()
	adminURL := testdb.AdminURL(t)
	var out, errOut bytes.Buffer
	args := []string{"all",
		"--events", "2000", "--workspaces", "5", "--runs", "1", "--batch", "500", "--clients", "2",
		"--record-txs", "20", "--query-events", "2000", "--queries", "30", "--deep-page", "3",
		"--export-events", "2000", "--checkpoint=false",
		"--plans", t.TempDir() + "/plans.txt",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := Run(ctx, args, Options{DatabaseURL: adminURL}, &out, &errOut)
	require.NoError(t, err, "stderr:\n%s", errOut.String())

	got := map[string]string{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		require.True(t, ok, "line %q is not key=value", sc.Text())
		require.NotContains(t, got, k, "key %s printed twice", k)
		got[k] = v
	}
	for _, k := range []string{
		"bench.database", "bench.nproc", "bench.postgres", "bench.loadavg_start", "bench.loadavg_end",
		"record.plain_median_ms", "record.with_record_median_ms", "record.with_vs_plain",
		"record.with_queue_median_ms", "record.with_queue_p95_ms", "record.queue_vs_plain",
		"record.with_record_tx_median_ms", "record.record_tx_vs_plain",
		"pipeline.recordbatch_events_per_s", "pipeline.copy_events_per_s", "pipeline.relay_events_per_s",
		"pipeline.floor_events_per_s", "pipeline.relay_vs_floor", "pipeline.recordbatch_vs_copy", "pipeline.recordbatch_vs_copy_interleaved",
		"pipeline.relay_wal_bytes_per_event", "pipeline.relay_second_half_events_per_s", "storage.bytes_per_event", "storage.heap_bytes_per_event",
		"storage.index_bytes_per_event", "storage.index.pkey_bytes_per_event",
		"ingest.http_events_per_s", "ingest.copy_events_per_s", "ingest.http_vs_copy",
		"query.p50_ms", "query.p95_ms", "query.p99_ms", "query.first_p95_ms", "query.deep_p95_ms",
		"query.plans", "query.plans_with_seq_scan", "query.plans_with_sort", "query.storage.bytes_per_event",
		"export.http_rows_per_s", "export.copy_rows_per_s", "export.http_mb_per_s", "export.http_vs_copy",
		"export.ttfb_ms", "export.direct_rows_per_s", "export.rss_growth_mib", "export.heap_growth_mib", "export.small_rss_growth_mib",
		"target.relay_vs_floor", "target.record_overhead", "target.record_tx_overhead", "target.queue_overhead", "target.recordbatch_vs_copy",
		"target.ingest_vs_copy", "target.query_p95", "target.query_p99", "target.query_deep_vs_first",
		"target.query_index_scans", "target.export_vs_copy", "target.export_ttfb", "target.export_rss",
		"target.export_memory_flat",
	} {
		require.Contains(t, got, k)
	}
	for k, v := range got {
		if strings.HasPrefix(k, "target.") {
			require.Contains(t, []string{"pass", "miss"}, v, k)
		}
	}
	require.NotEqual(t, "0", got["query.plans"], "the EXPLAIN pass saw no plan")

	// The scratch database is gone.
	conn, err := pgx.Connect(ctx, adminURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`,
		got["bench.database"]).Scan(&exists))
	require.False(t, exists, "scratch database %s was not dropped", got["bench.database"])
}

// TestGeneratedRowsMatchRecordBatch checks that the raw COPY rows of the
// floors are exactly what RecordBatch stores for the same events.
func TestGeneratedRowsMatchRecordBatch(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	ctx := context.Background()
	ws := []string{"ws_0000", "ws_0001"}
	now := time.Now().UTC().Add(-time.Minute)
	g := newGenerator(7, ws)
	var gen []genEvent
	var evs []outbox.Event
	for range 300 {
		e := g.next(g.workspace(), g.within(now, pipelineSpan))
		gen = append(gen, e)
		evs = append(evs, e.event())
	}
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return rec.RecordBatch(ctx, tx, evs) }))

	rows, err := pool.Query(ctx, `SELECT id::text, workspace_id, occurred_at, action, actor_type,
		coalesce(actor_id, ''), coalesce(actor_email, ''), coalesce(actor_name, ''), coalesce(resource_type, ''),
		resource_ids, resource_ids_flat, source, coalesce(host(ip), ''), coalesce(user_agent, ''),
		coalesce(request_id, ''), details
		FROM audit_outbox ORDER BY pos`)
	require.NoError(t, err)
	i := 0
	for rows.Next() {
		var id, wsID, action, actorType, actorID, email, name, rtype, ids, flat, source, ip, ua, reqID, details string
		var occurred time.Time
		require.NoError(t, rows.Scan(&id, &wsID, &occurred, &action, &actorType, &actorID, &email, &name, &rtype,
			&ids, &flat, &source, &ip, &ua, &reqID, &details))
		e := gen[i]
		wantIP := ""
		if e.ip.IsValid() {
			wantIP = e.ip.String()
		}
		require.Equal(t,
			[]any{e.id.String(), e.workspace, e.occurredAt.UnixMilli(), e.action, e.actorType, e.actorID, e.actorEmail,
				e.actorName, e.resourceType, e.resourceIDsJSON(), e.resourceIDsFlat(), e.source, wantIP, e.userAgent,
				e.requestID, e.details},
			[]any{id, wsID, occurred.UnixMilli(), action, actorType, actorID, email, name, rtype, ids, flat, source, ip, ua,
				reqID, details},
			"event %d", i)
		require.GreaterOrEqual(t, len(e.details), 150, "details should be a few hundred bytes")
		i++
	}
	require.NoError(t, rows.Err())
	require.Equal(t, len(gen), i)
}

func TestParseArgs(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		nil,
		{"--events", "5"},
		{"nonsense"},
		{"pipeline", "--events", "0"},
		{"query", "--deep-page", "1"},
		{"export", "extra"},
	} {
		_, err := parseArgs(args, &bytes.Buffer{})
		require.Error(t, err, "args %q", args)
	}
	c, err := parseArgs([]string{"all", "--events", "10", "--runs", "2"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, allStages, c.stages)
	require.Equal(t, 10, c.events)
	require.Equal(t, 2, c.runs)
	require.Equal(t, QueryEventsDefault, c.queryEvents)
}

func TestHasRealSeqScan(t *testing.T) {
	t.Parallel()
	empty := `Limit  (actual rows=1 loops=1)
  ->  Append  (actual rows=1 loops=1)
        ->  Seq Scan on audit_events_p20251101 e_1  (actual rows=0 loops=1)
              Filter: (workspace_id = 'ws'::text)
        ->  Index Scan Backward using x on audit_events_p20260801 e_2  (actual rows=1 loops=1)
              Buffers: shared hit=3`
	require.False(t, hasRealSeqScan(empty))
	real := `Limit  (actual rows=1 loops=1)
  ->  Seq Scan on audit_events_p20260801 e_1  (actual rows=1 loops=1)
        Filter: (workspace_id = 'ws'::text)
        Rows Removed by Filter: 1000
        Buffers: shared hit=30`
	require.True(t, hasRealSeqScan(real))
	s := summarisePlan("duration: 1.5 ms  plan:\n" + real)
	require.Equal(t, int64(30), s.buffers)
	require.InDelta(t, 1.5, s.ms, 1e-9)
}
