package events

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// BenchmarkQueryPage serves one filtered page (100 events, action =
// ticket.update) over 50,000 events, through the handler: SQL, scanning,
// JSON.
func BenchmarkQueryPage(b *testing.B) {
	pool := testdb.New(b)
	bulkInsert(b, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 50, 50_000)
	analyze(b, pool)
	h := newHandlers(b, pool, Config{})
	r := testRouter(h, readKey("ws_a"))
	q := url.Values{"action": {"ticket.update"}, "limit": {"100"}}
	require.Equal(b, http.StatusOK, do(r, "/v1/events", q).Code)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := do(r, "/v1/events", q)
		if w.Code != http.StatusOK {
			b.Fatal(w.Body.String())
		}
	}
}

// BenchmarkExport streams 20,000 events (18,000 of ws_a) as guarded CSV
// through Export into io.Discard; reports rows/s and bytes/s.
func BenchmarkExport(b *testing.B) {
	pool := testdb.New(b)
	bulkInsert(b, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 100, 20_000)
	analyze(b, pool)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	require.NoError(b, err)
	defer conn.Release()
	var rows int64
	cw := &CountingWriter{W: io.Discard}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		n, err := Export(ctx, conn.Conn(), "ws_a", Filters{}, true, cw)
		if err != nil {
			b.Fatal(err)
		}
		rows += n
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
	b.SetBytes(cw.Bytes() / int64(b.N))
}
