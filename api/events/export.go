package events

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/outbox"
)

// ExportAction is the action of the event recording each export.
const ExportAction = "audit_log.export"

// Export formats: the contract's CSV, and NDJSON, one event per line in
// seq (chain) order with seq, hash and prev_hash, for offline verification
// (README "Integrity").
const (
	FormatCSV    = "csv"
	FormatNDJSON = "ndjson"
)

// flushEvery is how many response bytes are buffered before a flush, so the
// client sees rows steadily without a flush per COPY message.
const flushEvery = 64 << 10

// recordTimeout bounds recording the export event, which runs after the
// request's own context may have been cancelled by a departed client.
const recordTimeout = 10 * time.Second

// rollbackTimeout bounds ending the export transaction after a failure.
const rollbackTimeout = 5 * time.Second

// Export streams workspace's events matching f into w as CSV with a header
// row, oldest first, straight from COPY ... TO STDOUT: nothing is buffered
// beyond one COPY message. guard turns on the formula-injection guard. It
// returns the number of rows written (without the header).
//
// conn must be idle (no transaction open); Export runs a read-only
// transaction of its own on it. When ctx is cancelled or w fails, pgx closes
// the connection, which stops the COPY on the server; a pool discards such a
// connection on release.
func Export(ctx context.Context, conn *pgx.Conn, workspace string, f Filters, guard bool, w io.Writer) (rows int64, err error) {
	if !outbox.ValidWorkspaceID(workspace) {
		return 0, fmt.Errorf("exporting events: workspace %q must be 1-64 characters of A-Z a-z 0-9 . _ : -", workspace)
	}
	settings, args, copySQL := exportSQL(workspace, f, guard)
	return copyOut(ctx, conn, settings, args, copySQL, w)
}

// ExportNDJSON is Export in the ndjson format: each event as one JSON line,
// the API's event object with seq, hash and prev_hash, in seq order (the
// chain's order, which offline verification needs).
func ExportNDJSON(ctx context.Context, conn *pgx.Conn, workspace string, f Filters, w io.Writer) (rows int64, err error) {
	if !outbox.ValidWorkspaceID(workspace) {
		return 0, fmt.Errorf("exporting events: workspace %q must be 1-64 characters of A-Z a-z 0-9 . _ : -", workspace)
	}
	settings, args, copySQL := exportNDJSONSQL(workspace, f)
	return copyOut(ctx, conn, settings, args, copySQL, w)
}

// copyOut runs settings with args then copySQL in a read-only transaction
// on conn, streaming the COPY output into w.
func copyOut(ctx context.Context, conn *pgx.Conn, settings string, args []any, copySQL string, w io.Writer) (rows int64, err error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("starting export transaction: %w", err)
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			_ = tx.Rollback(rctx) // on a closed connection this fails at once; nothing to add
		}
	}()
	if _, err := tx.Exec(ctx, settings, args...); err != nil {
		return 0, fmt.Errorf("setting export filters: %w", err)
	}
	tag, err := conn.PgConn().CopyTo(ctx, w, copySQL)
	if err != nil {
		return 0, fmt.Errorf("copying events: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("ending export transaction: %w", err)
	}
	return tag.RowsAffected(), nil
}

// CountingWriter passes writes through to W and counts the bytes and the
// complete CSV records written (the header included). It understands RFC
// 4180 quoting, so a newline inside a quoted field does not count. Bytes
// and Rows may be read while another goroutine writes.
type CountingWriter struct {
	W io.Writer
	// NDJSON counts lines instead: every newline ends a record (JSON text
	// holds none raw) and there is no header.
	NDJSON  bool
	bytes   atomic.Int64
	records atomic.Int64
	inQuote bool
}

// Write implements io.Writer.
func (cw *CountingWriter) Write(p []byte) (int, error) {
	n, err := cw.W.Write(p)
	var recs int64
	// A doubled quote inside a quoted field toggles twice: no net change.
	for _, b := range p[:n] {
		if cw.NDJSON {
			if b == '\n' {
				recs++
			}
			continue
		}
		switch b {
		case '"':
			cw.inQuote = !cw.inQuote
		case '\n':
			if !cw.inQuote {
				recs++
			}
		}
	}
	cw.records.Add(recs)
	cw.bytes.Add(int64(n))
	return n, err
}

// Bytes is the number of bytes written so far.
func (cw *CountingWriter) Bytes() int64 { return cw.bytes.Load() }

// Rows is the number of complete data rows written so far: records less
// the CSV header.
func (cw *CountingWriter) Rows() int64 {
	if cw.NDJSON {
		return cw.records.Load()
	}
	return max(cw.records.Load()-1, 0)
}

// responseStream writes the CSV into the response, setting the headers on
// the first byte (until then an error can still be a JSON error) and
// flushing every flushEvery bytes.
type responseStream struct {
	c           *gin.Context
	filename    string
	contentType string
	started     bool
	unflushed   int
}

func (s *responseStream) Write(p []byte) (int, error) {
	if !s.started {
		s.started = true
		h := s.c.Writer.Header()
		h.Set("Content-Type", s.contentType)
		h.Set("Content-Disposition", `attachment; filename="`+s.filename+`"`)
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		s.c.Status(http.StatusOK)
	}
	n, err := s.c.Writer.Write(p)
	if err != nil {
		return n, err
	}
	s.unflushed += n
	if s.unflushed >= flushEvery {
		s.c.Writer.Flush()
		s.unflushed = 0
	}
	return n, nil
}

// export serves GET /v1/events/export.
func (h *Handlers) export(c *gin.Context) {
	req, ok := parseRequest(c, paramFormat)
	if !ok {
		return
	}
	format := FormatCSV
	if f, ok := req.own[paramFormat]; ok {
		format = f
	}
	if format != FormatCSV && format != FormatNDJSON {
		httperr.BadParam(c, paramFormat, "must be csv or ndjson")
		return
	}
	ctx := c.Request.Context()
	ws := req.key.WorkspaceID
	conn, err := h.pool.Acquire(ctx)
	if err != nil {
		h.log.Error("events: acquiring connection for export failed", "workspace_id", ws, "error", err)
		dberr.Abort(c, err, "starting the export")
		return
	}
	// Fail closed: an export that cannot first be written down as begun
	// does not start, so none can go unrecorded (see intent.go).
	actor := outbox.Actor{Type: outbox.ActorAPIKey, ID: req.key.ID, Name: req.key.Name}
	intent, err := BeginExportIntent(ctx, conn.Conn(), ws, req.filters, format, actor, "api")
	if err != nil {
		conn.Release()
		h.log.Error("events: starting export failed", "workspace_id", ws, "error", err)
		dberr.Abort(c, err, "starting the export")
		return
	}
	stream := &responseStream{c: c, filename: exportFilename(ws, req.filters, format), contentType: csvContentType}
	cw := &CountingWriter{W: stream}
	began := time.Now()
	var rows int64
	if format == FormatNDJSON {
		stream.contentType, cw.NDJSON = ndjsonContentType, true
		rows, err = ExportNDJSON(ctx, conn.Conn(), ws, req.filters, cw)
	} else {
		rows, err = Export(ctx, conn.Conn(), ws, req.filters, h.cfg.CSVFormulaGuard, cw)
	}
	complete := err == nil
	if !complete {
		rows = cw.Rows()
	}
	h.exportRows.Add(float64(rows))
	h.exportBytes.Add(float64(cw.Bytes()))

	// The request's context may be cancelled (client gone); recording is
	// not. Its values (the request info: IP, user agent, request id) stay.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	recErr := intent.End(rctx, h.pool, h.cfg.Recorder, rows, complete)
	if recErr != nil {
		h.log.Error("events: recording export event failed; the interrupted-export sweep will record it",
			"workspace_id", ws, "error", recErr)
	}
	conn.Release() // a connection closed by an interrupted COPY is discarded by the pool

	switch {
	case err != nil && !stream.started:
		h.log.Error("events: export failed", "workspace_id", ws, "error", err)
		dberr.Abort(c, err, "exporting events")
	case err != nil && ctx.Err() != nil:
		// The client went away; there is nobody to tell.
		h.log.Info("events: export interrupted by client", "workspace_id", ws, "rows", rows, "bytes", cw.Bytes())
	case err != nil:
		// The status line has gone out: the only way left to tell the
		// client the file is incomplete is to cut the connection.
		h.log.Error("events: export failed while streaming", "workspace_id", ws, "rows", rows, "error", err)
		abortConnection(c)
	case recErr != nil:
		// Every export is recorded; one that could not be is not delivered
		// as complete either.
		abortConnection(c)
	default:
		c.Writer.Flush()
		h.log.Info("events: export done", "workspace_id", ws, "rows", rows, "bytes", cw.Bytes(),
			"duration_ms", time.Since(began).Milliseconds())
	}
}

// exportFilters renders f for the export event's details: from and to as
// single values, the other filters as lists.
func exportFilters(f Filters) map[string]any {
	filters := map[string]any{}
	for k, vs := range f.Values() {
		if k == ParamFrom || k == ParamTo {
			filters[k] = vs[0]
		} else {
			filters[k] = vs
		}
	}
	return filters
}

// Content types of the export formats.
const (
	csvContentType    = "text/csv; charset=utf-8"
	ndjsonContentType = "application/x-ndjson"
)

// exportFilename is auditlog-<workspace>-<from>-<to>.<format> with the bounds as
// compact UTC timestamps ("start"/"now" when open), restricted to
// characters safe in a quoted header and on every file system.
func exportFilename(workspace string, f Filters, format string) string {
	from, to := "start", "now"
	if !f.From.IsZero() {
		from = f.From.UTC().Format("20060102T150405Z")
	}
	if !f.To.IsZero() {
		to = f.To.UTC().Format("20060102T150405Z")
	}
	name := "auditlog-" + workspace + "-" + from + "-" + to + "." + format
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, name)
}

// abortConnection cuts the client connection mid-response so the client sees
// a truncated transfer rather than a well-formed end of a partial file. It
// hijacks the underlying HTTP/1 connection; where that is impossible
// (HTTP/2) it panics with http.ErrAbortHandler, which net/http turns into a
// stream reset (gin's Recovery middleware swallows that panic, ending the
// response early but cleanly: run exports without it or with a recovery
// that re-panics http.ErrAbortHandler).
func abortConnection(c *gin.Context) {
	// gin's writer refuses to hijack once body bytes are written, so go to
	// the net/http writer underneath.
	var rw http.ResponseWriter = c.Writer
	for {
		u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		rw = u.Unwrap()
	}
	if hj, ok := rw.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			c.Abort()
			return
		}
	}
	panic(http.ErrAbortHandler)
}
