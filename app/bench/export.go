package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/outbox"
)

// The export stage's workspaces: one with --export-events rows and one
// with a tenth of that, to show that memory does not grow with the size.
const (
	exportBigWS   = "bench_export_big"
	exportSmallWS = "bench_export_small"
)

// rssSampleInterval is how often the export stage samples RSS and heap.
const rssSampleInterval = 10 * time.Millisecond

// exportResult is one measured export.
type exportResult struct {
	rows, bytes int64
	d, ttfb     time.Duration
	rssGrowth   int64  // peak VmRSS - VmRSS before
	heapGrowth  int64  // peak Go heap objects - before
	allocs      uint64 // Go heap bytes allocated during the export
}

// exportStage exports both workspaces through GET /v1/events/export and
// through COPY (SELECT * ...) TO STDOUT, measuring throughput, time to the
// first byte and memory.
func (b *bench) exportStage(ctx context.Context) error {
	big := b.cfg.exportEvents
	small := big / 10
	if err := b.ensureDataset(ctx, dataset{
		name: "export", rows: big + small, seed: b.cfg.seed + 3,
		pick: func(g *generator) string {
			if g.rng.IntN(big+small) < small {
				return exportSmallWS
			}
			return exportBigWS
		},
	}); err != nil {
		return err
	}
	// The generator picks workspaces at random: count what each holds.
	sizes := map[string]int64{}
	for _, ws := range []string{exportBigWS, exportSmallWS} {
		var n int64
		if err := b.pool.QueryRow(ctx, countWorkspaceSQL, ws).Scan(&n); err != nil {
			return fmt.Errorf("counting %s: %w", ws, err)
		}
		sizes[ws] = n
	}
	srv, err := b.server()
	if err != nil {
		return err
	}
	// Warm up: the first pass over the table reads it into the caches.
	if _, err := b.copyExport(ctx, exportBigWS); err != nil {
		return err
	}

	rs := runs{}
	for run := range b.cfg.runs {
		for _, ws := range []string{exportSmallWS, exportBigWS} {
			prefix := "big_"
			if ws == exportSmallWS {
				prefix = "small_"
			}
			h, err := b.httpExport(ctx, srv, ws)
			if err != nil {
				return err
			}
			if h.rows != sizes[ws] {
				return fmt.Errorf("HTTP export of %s gave %d rows, want %d", ws, h.rows, sizes[ws])
			}
			c, err := b.copyExport(ctx, ws)
			if err != nil {
				return err
			}
			if c.rows != sizes[ws] {
				return fmt.Errorf("COPY of %s gave %d rows, want %d", ws, c.rows, sizes[ws])
			}
			dr, err := b.directExport(ctx, ws)
			if err != nil {
				return err
			}
			if dr.rows != sizes[ws] {
				return fmt.Errorf("direct export of %s gave %d rows, want %d", ws, dr.rows, sizes[ws])
			}
			rs.add(prefix+"direct_rows", perSecond(int(dr.rows), dr.d))
			rs.add(prefix+"direct_ttfb", ms(dr.ttfb))
			rs.add(prefix+"http_rows", perSecond(int(h.rows), h.d))
			rs.add(prefix+"http_mb", float64(h.bytes)/1e6/h.d.Seconds())
			rs.add(prefix+"copy_rows", perSecond(int(c.rows), c.d))
			rs.add(prefix+"copy_mb", float64(c.bytes)/1e6/c.d.Seconds())
			rs.add(prefix+"ratio", ratio(perSecond(int(h.rows), h.d), perSecond(int(c.rows), c.d)))
			rs.add(prefix+"ttfb", ms(h.ttfb))
			rs.add(prefix+"copy_ttfb", ms(c.ttfb))
			rs.add(prefix+"rss", float64(h.rssGrowth)/mib)
			rs.add(prefix+"heap", float64(h.heapGrowth)/mib)
			rs.add(prefix+"alloc_per_row", float64(h.allocs)/float64(h.rows))
			rs.add(prefix+"http_bytes_per_row", float64(h.bytes)/float64(h.rows))
			rs.add(prefix+"copy_bytes_per_row", float64(c.bytes)/float64(c.rows))
			b.progress("export run %d/%d %s: HTTP %.0f rows/s (first byte %.1f ms, RSS +%.1f MiB), COPY %.0f rows/s",
				run+1, b.cfg.runs, ws, perSecond(int(h.rows), h.d), ms(h.ttfb), float64(h.rssGrowth)/mib, perSecond(int(c.rows), c.d))
		}
	}

	o := b.out
	o.num("export.rows", float64(sizes[exportBigWS]), 0)
	o.num("export.small_rows", float64(sizes[exportSmallWS]), 0)
	for _, p := range []string{"", "small_"} {
		src := "big_"
		if p != "" {
			src = p
		}
		o.num("export."+p+"http_rows_per_s", rs.median(src+"http_rows"), 0)
		o.num("export."+p+"http_mb_per_s", rs.median(src+"http_mb"), 1)
		o.num("export."+p+"copy_rows_per_s", rs.median(src+"copy_rows"), 0)
		o.num("export."+p+"direct_rows_per_s", rs.median(src+"direct_rows"), 0)
		o.num("export."+p+"direct_ttfb_ms", rs.median(src+"direct_ttfb"), 1)
		o.num("export."+p+"copy_mb_per_s", rs.median(src+"copy_mb"), 1)
		o.num("export."+p+"http_vs_copy", rs.median(src+"ratio"), 3)
		o.num("export."+p+"ttfb_ms", rs.median(src+"ttfb"), 1)
		o.num("export."+p+"copy_ttfb_ms", rs.median(src+"copy_ttfb"), 1)
		o.num("export."+p+"rss_growth_mib", rs.median(src+"rss"), 1)
		o.num("export."+p+"heap_growth_mib", rs.median(src+"heap"), 1)
		o.num("export."+p+"alloc_bytes_per_row", rs.median(src+"alloc_per_row"), 0)
		o.num("export."+p+"http_bytes_per_row", rs.median(src+"http_bytes_per_row"), 0)
		o.num("export."+p+"copy_bytes_per_row", rs.median(src+"copy_bytes_per_row"), 0)
	}
	o.text("export.rss_note", "in-process_server_and_client;client_discards_bytes")
	o.target("export_vs_copy", rs.median("big_ratio") >= 0.8)
	o.target("export_ttfb", rs.median("big_ttfb") <= 100)
	o.target("export_rss", rs.median("big_rss") <= 32)
	// Flat: the large export grows memory no more than the small one
	// does, give or take 8 MiB of GC timing.
	o.target("export_memory_flat", rs.median("big_rss") <= rs.median("small_rss")+8)
	return nil
}

// firstByteWriter counts bytes and lines and notes when the first byte
// arrived. It counts lines with bytes.Count rather than with a CSV-aware
// scan (events.CountingWriter): the client shares the CPU with the server,
// and the generated rows hold no newline inside a field.
type firstByteWriter struct {
	start        time.Time
	first        time.Duration
	bytes, lines int64
}

func newFirstByteWriter(start time.Time) *firstByteWriter {
	return &firstByteWriter{start: start}
}

func (w *firstByteWriter) Write(p []byte) (int, error) {
	if w.first == 0 && len(p) > 0 {
		w.first = time.Since(w.start)
	}
	w.bytes += int64(len(p))
	w.lines += int64(bytes.Count(p, newline))
	return len(p), nil
}

var newline = []byte{'\n'}

// rows is the number of data rows: lines less the header.
func (w *firstByteWriter) rows() int64 { return max(w.lines-1, 0) }

// quiesceMemory collects garbage and returns freed memory to the OS, so
// that the baseline before an export is the live heap only.
func quiesceMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// httpExport downloads ws's export through the API, discarding the bytes,
// while sampling this process's RSS and Go heap every 10ms.
func (b *bench) httpExport(ctx context.Context, srv *server, ws string) (exportResult, error) {
	var r exportResult
	if _, err := srv.key(ctx, b.pool, ws); err != nil {
		return r, err
	}
	quiesceMemory()
	baseRSS := readRSS()
	baseHeap, baseAllocs := readHeap()
	sampler := startMemSampler(rssSampleInterval)

	start := time.Now()
	w := newFirstByteWriter(start)
	resp, err := srv.get(ctx, b.pool, ws, "/v1/events/export")
	if err == nil {
		buf := make([]byte, 64<<10)
		_, err = io.CopyBuffer(w, resp.Body, buf)
		resp.Body.Close()
	}
	r.d = time.Since(start)
	peakRSS, peakHeap := sampler.finish()
	if err != nil {
		return r, fmt.Errorf("exporting %s over HTTP: %w", ws, err)
	}
	_, allocs := readHeap()
	r.rows, r.bytes, r.ttfb = w.rows(), w.bytes, w.first
	r.rssGrowth = max(peakRSS-baseRSS, 0)
	r.heapGrowth = max(int64(peakHeap)-int64(baseHeap), 0)
	r.allocs = allocs - baseAllocs
	return r, nil
}

// directExport runs the export's own statement (events.Export: the
// formatting and formula guard in SQL) on a connection into a discarding
// writer, without HTTP: the difference to the HTTP figure is the server's
// Go and network path, the difference to copyExport the SQL formatting and
// plan.
func (b *bench) directExport(ctx context.Context, ws string) (exportResult, error) {
	var r exportResult
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return r, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer conn.Release()
	start := time.Now()
	w := newFirstByteWriter(start)
	_, err = events.Export(ctx, conn.Conn(), ws, events.Filters{}, true, w)
	r.d = time.Since(start)
	if err != nil {
		return r, fmt.Errorf("exporting %s directly: %w", ws, err)
	}
	r.rows, r.bytes, r.ttfb = w.rows(), w.bytes, w.first
	return r, nil
}

// copyExport runs the export's floor, COPY (SELECT * ...) TO STDOUT as
// CSV of the same rows in the same order, into a discarding writer.
func (b *bench) copyExport(ctx context.Context, ws string) (exportResult, error) {
	var r exportResult
	if !outbox.ValidWorkspaceID(ws) {
		return r, fmt.Errorf("workspace %q cannot be formatted into COPY", ws)
	}
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return r, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer conn.Release()
	start := time.Now()
	w := newFirstByteWriter(start)
	_, err = conn.Conn().PgConn().CopyTo(ctx, w, fmt.Sprintf(exportCopyFormat, ws))
	r.d = time.Since(start)
	if err != nil {
		return r, fmt.Errorf("COPY of %s: %w", ws, err)
	}
	r.rows, r.bytes, r.ttfb = w.rows(), w.bytes, w.first
	return r, nil
}
