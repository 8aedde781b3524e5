package events

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// guardCell is the model of the formula guard.
func guardCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r\n", rune(s[0])) {
		return "'" + s
	}
	return s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// csvRow is the CSV record the export must produce for w.
func (w wantEvent) csvRow(guard bool) []string {
	g := func(s string) string { return s }
	if guard {
		g = guardCell
	}
	return []string{
		w.ID,
		w.Occurred.UTC().Format("2006-01-02T15:04:05.000Z"),
		testNow.Format("2006-01-02T15:04:05.000Z"),
		g(w.Workspace), g(w.Action), g(w.ActorType), g(deref(w.ActorID)), g(deref(w.Email)),
		g(deref(w.Name)), g(deref(w.ResourceType)), g(w.Flat), g(w.Source), g(deref(w.IP)),
		g(deref(w.UA)), g(deref(w.RequestID)), g(deref(w.Details)),
	}
}

// readCSV parses body with the standard library's RFC 4180 reader.
func readCSV(t testing.TB, body []byte) [][]string {
	t.Helper()
	r := csv.NewReader(bytes.NewReader(body))
	r.FieldsPerRecord = len(CSVHeader)
	recs, err := r.ReadAll()
	require.NoError(t, err)
	require.NotEmpty(t, recs)
	require.Equal(t, CSVHeader, recs[0])
	return recs[1:]
}

// TestExportMatchesModel exports random filter combinations over random
// events, with the guard on and off, and compares every CSV field with the
// model; each export is recorded as an audit_log.export event.
func TestExportMatchesModel(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(timeSeed(t), 7))
	pool, all := datasetDB(t, rng, 600)
	reg := prometheus.NewRegistry()
	guarded := newHandlers(t, pool, Config{CSVFormulaGuard: true, Registerer: reg})
	plain := newHandlers(t, pool, Config{CSVFormulaGuard: false, Registerer: reg}) // shares the counter

	var exports int
	var totalRows, totalBytes float64
	for combo := range 40 {
		raw := randomFilters(rng)
		if combo == 0 {
			raw = map[string][]string{}
		}
		f, err := ParseFilters(url.Values(raw))
		require.NoError(t, err)
		ws := pick(rng, []string{"ws_a", "ws_b"})
		want := expected(all, ws, f)
		for _, guard := range []bool{true, false} {
			h := plain
			if guard {
				h = guarded
			}
			q := url.Values(raw)
			if rng.IntN(2) == 0 {
				q = url.Values{}
				for k, v := range raw {
					q[k] = v
				}
				q.Set("format", "csv")
			}
			w := do(testRouter(h, readKey(ws)), "/v1/events/export", q)
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
			require.Equal(t, "text/csv; charset=utf-8", w.Header().Get("Content-Type"))
			require.Equal(t, fmt.Sprintf(`attachment; filename="%s"`, exportFilename(ws, f, FormatCSV)), w.Header().Get("Content-Disposition"))
			got := readCSV(t, w.Body.Bytes())
			require.Len(t, got, len(want), "combination %d: %v in %s", combo, raw, ws)
			for i := range want {
				require.Equal(t, want[i].csvRow(guard), got[i], "combination %d: %v in %s, guard %v, row %d", combo, raw, ws, guard, i)
			}
			exports++
			totalRows += float64(len(want))
			totalBytes += float64(w.Body.Len())
		}
	}
	recs := exportEvents(t, pool)
	require.Len(t, recs, exports)
	for _, r := range recs {
		require.Equal(t, "api_key", r.ActorType)
		require.Equal(t, "api", r.Source)
		require.Equal(t, testClientIP, deref(r.IP))
		require.Equal(t, testUserAgent, deref(r.UA))
		require.Equal(t, testRequestID, deref(r.RequestID))
		require.Equal(t, readKey(r.Workspace).ID, deref(r.ActorID))
		require.Equal(t, readKey(r.Workspace).Name, deref(r.ActorName))
		require.Equal(t, true, r.Details["complete"])
		require.Equal(t, "csv", r.Details["format"])
	}
	// The first combination had no filters: all of its workspace's rows.
	require.Equal(t, map[string]any{}, recs[0].Details["filters"])
	require.EqualValues(t, len(expected(all, recs[0].Workspace, Filters{})), recs[0].Details["rows"])
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 2)
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	require.Equal(t, map[string]float64{"auditlog_export_rows_total": totalRows, "auditlog_export_bytes_total": totalBytes}, got)
}

// TestExportFormulaGuard spells out the guard on the trigger characters.
func TestExportFormulaGuard(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	ts := time.Date(2026, 11, 2, 3, 4, 5, 6_000_000, time.UTC)
	insertEvents(t, pool, []outbox.Event{{
		WorkspaceID: "-ws", OccurredAt: ts, Action: "ticket.update", Source: "web",
		Actor:     outbox.Actor{Type: "user", ID: "+1", Email: "=x@y.io", Name: "@SUM(A1)"},
		UserAgent: "\tcmd", RequestID: "\rcr",
		Details: map[string]any{"k": "=v"},
	}, {
		WorkspaceID: "-ws", OccurredAt: ts.Add(time.Millisecond), Action: "ticket.update", Source: "web",
		Actor:     outbox.Actor{Type: "user", ID: "plain", Name: "safe ' name"},
		UserAgent: "\nlf", RequestID: "-2+3",
	}})
	for _, guard := range []bool{true, false} {
		h := newHandlers(t, pool, Config{CSVFormulaGuard: guard})
		w := do(testRouter(h, readKey("-ws")), "/v1/events/export", nil)
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		rows := readCSV(t, w.Body.Bytes())
		require.Len(t, rows, 2)
		col := func(row int, name string) string { return rows[row][slices.Index(CSVHeader, name)] }
		q := map[bool]string{true: "'", false: ""}[guard]
		require.Equal(t, "2026-11-02T03:04:05.006Z", col(0, "occurred_at"))
		require.Equal(t, q+"-ws", col(0, "workspace_id"))
		require.Equal(t, q+"+1", col(0, "actor_id"))
		require.Equal(t, q+"=x@y.io", col(0, "actor_email"))
		require.Equal(t, q+"@SUM(A1)", col(0, "actor_name"))
		require.Equal(t, q+"\tcmd", col(0, "user_agent"))
		require.Equal(t, q+"\rcr", col(0, "request_id"))
		require.Equal(t, `{"k":"=v"}`, col(0, "details"))
		require.Equal(t, "plain", col(1, "actor_id"))
		require.Equal(t, "safe ' name", col(1, "actor_name"))
		require.Equal(t, "", col(1, "actor_email")) // null: empty field
		require.Equal(t, "", col(1, "details"))
		require.Equal(t, q+"\nlf", col(1, "user_agent"))
		require.Equal(t, q+"-2+3", col(1, "request_id"))
		require.Equal(t, "ticket.update", col(1, "action"))
	}
}

// TestExportEmptyFieldsAreBare: every empty value is a bare empty field,
// resource_ids of an event without resource ids included, never "" (how
// COPY writes an empty string): "null is an empty field", one way only.
func TestExportEmptyFieldsAreBare(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	ts := time.Date(2026, 11, 2, 3, 4, 5, 6_000_000, time.UTC)
	insertEvents(t, pool, []outbox.Event{{
		WorkspaceID: "ws_a", OccurredAt: ts, Action: "ticket.update", Source: "web",
		Actor: outbox.Actor{Type: "system"},
	}, {
		WorkspaceID: "ws_a", OccurredAt: ts.Add(time.Millisecond), Action: "ticket.update", Source: "web",
		Actor: outbox.Actor{Type: "system"}, Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{}},
	}, {
		WorkspaceID: "ws_a", OccurredAt: ts.Add(2 * time.Millisecond), Action: "ticket.update", Source: "web",
		Actor: outbox.Actor{Type: "system"}, Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": "t_1"}},
	}})
	ids := slices.Index(CSVHeader, "resource_ids")
	for _, guard := range []bool{true, false} {
		h := newHandlers(t, pool, Config{CSVFormulaGuard: guard})
		w := do(testRouter(h, readKey("ws_a")), "/v1/events/export", nil)
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		rows := readCSV(t, w.Body.Bytes())
		require.Len(t, rows, 3)
		require.Equal(t, []string{"", "", "ticket=t_1"}, []string{rows[0][ids], rows[1][ids], rows[2][ids]})
		// No value here needs quoting, so each raw line is its fields
		// joined: an empty field is bare.
		lines := strings.Split(strings.TrimSuffix(w.Body.String(), "\n"), "\n")
		require.Len(t, lines, 1+len(rows))
		for i, row := range rows {
			require.Equal(t, strings.Join(row, ","), lines[i+1], "guard %v, row %d", guard, i)
		}
	}
}

// TestInjectionThroughFilters sends hostile text through every filter of
// both routes: free-text filters (actor_id, actor_email) match exactly the
// one event carrying that text; constrained ones are refused; nothing is
// ever executed.
func TestInjectionThroughFilters(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `CREATE TABLE canary (x int)`)
	require.NoError(t, err)

	hostileIDs := []string{
		`'); DROP TABLE audit_events; --`, `' OR '1'='1`, `\'; DROP TABLE canary; --`,
		`$$; DROP TABLE canary; $$`, `$1`, `%s`, `current_setting('auditlog.p1')`, `"quoted"`,
		`back\slash`, `ünï🦄 ∑`, `' || pg_sleep(5) || '`, `{"a":1}`, `a,b;c`, `E'\x41'`,
		`U&'\0041'`, `auditlog.p1`, "line\nbreak",
	}
	hostileEmails := []string{
		`o'neil'--@x.io`, `a\'b@x.io`, `$$@x.io`, `'||pg_sleep(5)||'@x.io`, `"q"@x.io`,
		`%'@x.io`, `ünï@x.io`, `x);drop@x.io`,
	}
	var es []outbox.Event
	base := time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
	for i, id := range hostileIDs {
		es = append(es, outbox.Event{WorkspaceID: "ws_a", OccurredAt: base.Add(time.Duration(i) * time.Second),
			Action: "ticket.update", Source: "web", Actor: outbox.Actor{Type: "user", ID: id, Name: id}})
	}
	for i, email := range hostileEmails {
		es = append(es, outbox.Event{WorkspaceID: "ws_a", OccurredAt: base.Add(time.Duration(100+i) * time.Second),
			Action: "ticket.update", Source: "web", Actor: outbox.Actor{Type: "user", Email: email}})
	}
	// The same texts in another workspace must never leak in.
	for i, id := range hostileIDs {
		es = append(es, outbox.Event{WorkspaceID: "ws_b", OccurredAt: base.Add(time.Duration(i) * time.Second),
			Action: "ticket.update", Source: "web", Actor: outbox.Actor{Type: "user", ID: id}})
	}
	insertEvents(t, pool, es)
	h := newHandlers(t, pool, Config{CSVFormulaGuard: true})
	r := testRouter(h, readKey("ws_a"))

	count := func(q url.Values) (int, int) {
		w := do(r, "/v1/events", q)
		require.Equal(t, http.StatusOK, w.Code, "%v: %s", q, w.Body.String())
		var p Page
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &p))
		we := do(r, "/v1/events/export", q)
		require.Equal(t, http.StatusOK, we.Code, "%v: %s", q, we.Body.String())
		return len(p.Data), len(readCSV(t, we.Body.Bytes()))
	}
	for _, id := range hostileIDs {
		nq, ne := count(url.Values{"actor_id": {id}})
		require.Equal(t, 1, nq, "actor_id %q", id)
		require.Equal(t, 1, ne, "actor_id %q", id)
	}
	for _, email := range hostileEmails {
		nq, ne := count(url.Values{"actor_email": {email}})
		require.Equal(t, 1, nq, "actor_email %q", email)
		require.Equal(t, 1, ne, "actor_email %q", email)
	}
	nq, ne := count(url.Values{"actor_id": hostileIDs, "actor_email": hostileEmails})
	require.Zero(t, nq) // both filters apply: no event has both
	require.Zero(t, ne)
	nq, ne = count(url.Values{"actor_id": hostileIDs})
	require.Equal(t, len(hostileIDs), nq)
	require.Equal(t, len(hostileIDs), ne)

	// Constrained filters refuse hostile text by name, on both routes.
	for _, param := range []string{"action", "resource_type", "source", "from", "to"} {
		for _, v := range []string{`'); DROP TABLE audit_events; --`, `ticket.*'; --`, `$$`, `\`, "ünï"} {
			for _, path := range []string{"/v1/events", "/v1/events/export"} {
				w := do(r, path, url.Values{param: {v}})
				require.Equal(t, http.StatusBadRequest, w.Code, "%s %s=%q", path, param, v)
				require.Equal(t, param, decodeErr(t, w).Error.Field)
			}
		}
	}

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&n))
	require.Equal(t, len(es), n)
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM canary`).Scan(&n))
}

// TestExportBadParams: export-specific refusals.
func TestExportBadParams(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	h := newHandlers(t, pool, Config{})
	r := testRouter(h, readKey("ws_a"))
	for q, field := range map[string]string{
		"format=json":            "format",
		"format=":                "format",
		"format=csv&format=csv":  "format",
		"limit=10":               "limit",
		"cursor=abc":             "cursor",
		"actor_email=x":          "actor_email",
		"from=2026-13-01T00:00Z": "from",
	} {
		req := httptest.NewRequest(http.MethodGet, "/v1/events/export?"+q, nil)
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		require.Equal(t, http.StatusBadRequest, w.Code, q)
		require.Equal(t, field, decodeErr(t, w).Error.Field, q)
	}
	require.Empty(t, exportEvents(t, pool), "a refused export is not an export")
}

// copyRunningSQL counts the sessions of this database running a COPY,
// parallel workers included.
const copyRunningSQL = `
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active'
  AND query LIKE 'COPY (%' AND pid <> pg_backend_pid()`

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func copyRunning(t *testing.T, pool *pgxpool.Pool) int {
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), copyRunningSQL).Scan(&n))
	return n
}

// startExport opens GET /v1/events/export on a real HTTP server and reads
// the first 8 KiB.
func startExport(t *testing.T, pool *pgxpool.Pool) (*http.Response, *http.Client, *httptest.Server) {
	t.Helper()
	h := newHandlers(t, pool, Config{CSVFormulaGuard: true})
	srv := httptest.NewServer(testRouter(h, readKey("ws_a")))
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	resp, err := client.Get(srv.URL + "/v1/events/export")
	require.NoError(t, err)
	// Runs before srv.Close, which waits for the handler to finish.
	t.Cleanup(func() { _ = resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)
	buf := make([]byte, 8<<10)
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(buf, []byte(strings.Join(CSVHeader, ",")+"\n")))
	return resp, client, srv
}

// TestExportClientDisconnect: a client that goes away mid-export stops the
// COPY on the server, the connection does not come back to the pool broken,
// and the interrupted export is recorded as incomplete.
func TestExportClientDisconnect(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	const total = 200_000
	bulkInsert(t, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 10, total)

	resp, client, srv := startExport(t, pool)
	// The server is blocked writing to us: the COPY is still running.
	require.Positive(t, copyRunning(t, pool))
	require.NoError(t, resp.Body.Close()) // unread body: the transport closes the connection

	waitFor(t, "the COPY to stop", 10*time.Second, func() bool { return copyRunning(t, pool) == 0 })
	var recs []recordedExport
	waitFor(t, "the export event", 10*time.Second, func() bool { recs = exportEvents(t, pool); return len(recs) == 1 })
	require.Equal(t, false, recs[0].Details["complete"])
	rows, ok := recs[0].Details["rows"].(float64)
	require.True(t, ok)
	require.Less(t, rows, float64(total))
	waitFor(t, "the export connection to be released", 10*time.Second, func() bool { return pool.Stat().AcquiredConns() == 0 })

	// The pool and the server still serve.
	for range 2 * int(pool.Config().MaxConns) {
		var one int
		require.NoError(t, pool.QueryRow(context.Background(), `SELECT 1`).Scan(&one))
	}
	r2, err := client.Get(srv.URL + "/v1/events?limit=3")
	require.NoError(t, err)
	body, err := io.ReadAll(r2.Body)
	require.NoError(t, err)
	require.NoError(t, r2.Body.Close())
	require.Equal(t, http.StatusOK, r2.StatusCode, string(body))
}

// TestExportFailureMidStreamCutsConnection: when the COPY fails after the
// 200 went out, the client sees a broken transfer, not a clean end of a
// partial file.
func TestExportFailureMidStreamCutsConnection(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	bulkInsert(t, pool, time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), 10, 100_000)

	resp, _, _ := startExport(t, pool)
	defer resp.Body.Close()
	var killed int
	require.NoError(t, pool.QueryRow(context.Background(), `
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND query LIKE 'COPY (%' AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'`).Scan(&killed))
	require.Equal(t, 1, killed)
	_, err := io.Copy(io.Discard, resp.Body)
	require.Error(t, err, "a truncated export must not read as complete")

	var recs []recordedExport
	waitFor(t, "the export event", 10*time.Second, func() bool { recs = exportEvents(t, pool); return len(recs) == 1 })
	require.Equal(t, false, recs[0].Details["complete"])
}

// TestExportWriterCountsRows: CountingWriter counts records, not newlines.
func TestExportWriterCountsRows(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	cw := &CountingWriter{W: &buf}
	data := "h1,h2\n\"a\nb\",\"say \"\"hi\"\"\n\"\nc,\"\"\n"
	for i := range len(data) { // byte by byte: state carries across writes
		_, err := cw.Write([]byte{data[i]})
		require.NoError(t, err)
	}
	require.EqualValues(t, 2, cw.Rows())
	require.EqualValues(t, len(data), cw.Bytes())
	recs, err := csv.NewReader(strings.NewReader(data)).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 3)
}

func TestExportFilename(t *testing.T) {
	t.Parallel()
	f := Filters{From: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 12, 1, 12, 30, 0, 0, time.UTC)}
	require.Equal(t, "auditlog-ws_acme-20261101T000000Z-20261201T123000Z.csv", exportFilename("ws_acme", f, FormatCSV))
	require.Equal(t, "auditlog-org_1.team-start-now.csv", exportFilename("org:1.team", Filters{}, FormatCSV))
	require.Equal(t, "auditlog-ws-start-now.ndjson", exportFilename("ws", Filters{}, FormatNDJSON))
}
