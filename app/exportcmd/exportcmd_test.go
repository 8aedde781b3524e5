package exportcmd

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/internal/syncbuf"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testNow = time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)

// setup returns a fresh database holding es (recorded through the real
// recorder and moved into audit_events as the relay would).
func setup(t *testing.T, es []outbox.Event) *pgxpool.Pool {
	t.Helper()
	pool := testdb.New(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `CREATE TABLE audit_events_p202611 PARTITION OF audit_events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')`)
	require.NoError(t, err)
	rec, err := outbox.New(outbox.Options{Now: func() time.Time { return testNow }})
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := rec.RecordBatch(ctx, tx, es); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
WITH moved AS (DELETE FROM audit_outbox RETURNING *)
INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details)
SELECT pos, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details
FROM moved`)
		return err
	}))
	return pool
}

var base = time.Date(2026, 11, 5, 10, 0, 0, 0, time.UTC)

func sample() []outbox.Event {
	return []outbox.Event{
		{ID: "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e01", WorkspaceID: "ws_a", OccurredAt: base.Add(2 * time.Second),
			Action: "ticket.close", Source: "web", IP: "203.0.113.7",
			Actor:    outbox.Actor{Type: "user", ID: "'); DROP TABLE audit_events; --", Email: "Alice@Acme.io", Name: `Liddell, "Alice"`},
			Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": "t_1", "channel": "C0451"}},
			Details:  map[string]any{"note": "line1\nline2"}},
		{ID: "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e02", WorkspaceID: "ws_a", OccurredAt: base.Add(time.Second),
			Action: "ticket.update", Source: "api", Actor: outbox.Actor{Type: "user", ID: "u_1", Name: "=HYPERLINK(\"x\")"}},
		{ID: "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e03", WorkspaceID: "ws_a", OccurredAt: base,
			Action: "member.invite", Source: "web", Actor: outbox.Actor{Type: "user", ID: "u_2"}},
		{ID: "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e04", WorkspaceID: "ws_b", OccurredAt: base,
			Action: "ticket.update", Source: "web", Actor: outbox.Actor{Type: "user", ID: "u_1"}},
	}
}

// recordedExport is an audit_log.export event left in the outbox.
type recordedExport struct {
	Workspace, ActorType, ActorID, ActorName, Source string
	IP                                               *string
	Details                                          map[string]any
}

func exportEvents(t *testing.T, pool *pgxpool.Pool) []recordedExport {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT workspace_id, actor_type, coalesce(actor_id, ''), coalesce(actor_name, ''), source, host(ip), details
FROM audit_outbox WHERE action = 'audit_log.export' ORDER BY pos`)
	require.NoError(t, err)
	defer rows.Close()
	var out []recordedExport
	for rows.Next() {
		var e recordedExport
		var details string
		require.NoError(t, rows.Scan(&e.Workspace, &e.ActorType, &e.ActorID, &e.ActorName, &e.Source, &e.IP, &details))
		require.NoError(t, json.Unmarshal([]byte(details), &e.Details))
		out = append(out, e)
	}
	require.NoError(t, rows.Err())
	return out
}

func parseCSV(t *testing.T, b []byte) [][]string {
	t.Helper()
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = len(events.CSVHeader)
	recs, err := r.ReadAll()
	require.NoError(t, err)
	require.Equal(t, events.CSVHeader, recs[0])
	return recs[1:]
}

// run is auditlog export's work: parse args, export with the formula guard
// on (the configuration's default).
func run(ctx context.Context, pool *pgxpool.Pool, args []string, stdout, stderr io.Writer) error {
	return runWith(ctx, pool, Options{CSVFormulaGuard: true}, args, stdout, stderr)
}

// runWith is run with opts.
func runWith(ctx context.Context, pool *pgxpool.Pool, opts Options, args []string, stdout, stderr io.Writer) error {
	req, err := Parse(args, stderr)
	if err != nil {
		return err
	}
	return Export(ctx, pool, opts, req, stdout, stderr)
}

func TestRunWritesFile(t *testing.T) {
	t.Parallel()
	pool := setup(t, sample())
	dir := t.TempDir()
	out := filepath.Join(dir, "export.csv")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), pool, []string{
		"--workspace", "ws_a", "--action", "ticket.*", "--from", "2026-11-01T00:00:00Z", "-o", out,
	}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	require.Empty(t, stdout.String())
	require.Regexp(t, `^exported 2 rows \(\d+ B\) in \S+ to `+regexpQuote(out)+"\n$", stderr.String())

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	rows := parseCSV(t, b)
	require.Len(t, rows, 2)
	require.Equal(t, []string{
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e02", "2026-11-05T10:00:01.000Z", "2026-12-15T00:00:00.000Z",
		"ws_a", "ticket.update", "user", "u_1", "", `'=HYPERLINK("x")`, "", "", "api", "", "", "", "",
	}, rows[0])
	require.Equal(t, []string{
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e01", "2026-11-05T10:00:02.000Z", "2026-12-15T00:00:00.000Z",
		"ws_a", "ticket.close", "user", "'); DROP TABLE audit_events; --", "alice@acme.io", `Liddell, "Alice"`,
		"ticket", "channel=C0451;ticket=t_1", "web", "203.0.113.7", "", "", `{"note":"line1\nline2"}`,
	}, rows[1])

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")

	recs := exportEvents(t, pool)
	require.Len(t, recs, 1)
	r := recs[0]
	require.Equal(t, "ws_a", r.Workspace)
	require.Equal(t, "service", r.ActorType)
	require.Equal(t, ActorID, r.ActorID)
	if u, err := user.Current(); err == nil {
		require.Equal(t, u.Username, r.ActorName)
	}
	require.Equal(t, Source, r.Source)
	require.Nil(t, r.IP)
	require.Equal(t, map[string]any{
		"complete": true, "format": "csv", "rows": float64(2),
		"filters": map[string]any{"action": []any{"ticket.*"}, "from": "2026-11-01T00:00:00Z"},
	}, r.Details)
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func TestRunStdoutRepeatedFilters(t *testing.T) {
	t.Parallel()
	pool := setup(t, sample())
	var stdout, stderr bytes.Buffer
	err := runWith(context.Background(), pool, Options{CSVFormulaGuard: false}, []string{
		"--workspace", "ws_a", "--actor-id", "u_1", "--actor-id", "u_2", "--source", "web", "--source", "API",
	}, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	rows := parseCSV(t, stdout.Bytes())
	require.Len(t, rows, 2)
	require.Equal(t, "member.invite", rows[0][4])
	require.Equal(t, "ticket.update", rows[1][4])
	require.Equal(t, `=HYPERLINK("x")`, rows[1][8], "guard off")
	require.Contains(t, stderr.String(), "exported 2 rows")
	require.Contains(t, stderr.String(), "to stdout")
}

func TestRunRefusesBadArguments(t *testing.T) {
	t.Parallel()
	pool := setup(t, nil)
	dir := t.TempDir()
	out := filepath.Join(dir, "x.csv")
	for args, want := range map[string]string{
		"-o " + out: "--workspace is required",
		"--workspace ws_a --action Bad -o " + out:   "--action",
		"--workspace ws_a --from yesterday":         "--from",
		"--workspace ws_a --actor-email nobody":     "--actor-email",
		"--workspace ws_a --bogus 1":                "bogus",
		"--workspace ws_a extra":                    `unexpected argument "extra"`,
		"--workspace ws_a --source a-b --source ok": "--source",
		"--workspace bad/ws -o " + out:              "workspace",
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), pool, strings.Fields(args), &stdout, &stderr)
		require.ErrorContains(t, err, want, args)
		_, perr := Parse(strings.Fields(args), io.Discard)
		require.Error(t, perr, "refused by Parse, before any connection: %s", args)
	}
	_, err := os.Stat(out)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Empty(t, exportEvents(t, pool), "refused arguments are no export")
}

// cancelOnWrite cancels the run's context on the first write reaching
// stdout, as a Ctrl-C in the middle of an export would. A later write waits
// for the cancellation and fails with it, so the rows that reach stdout are
// only the first chunk's, however quickly the server had sent the rest.
type cancelOnWrite struct {
	ctx    context.Context
	cancel context.CancelFunc
	n      int
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	if c.n > 0 {
		<-c.ctx.Done()
		return 0, c.ctx.Err()
	}
	c.cancel()
	c.n += len(p)
	return len(p), nil
}

func TestRunInterrupted(t *testing.T) {
	t.Parallel()
	var es []outbox.Event
	for i := range 2000 {
		es = append(es, outbox.Event{WorkspaceID: "ws_a", OccurredAt: base.Add(time.Duration(i) * time.Millisecond),
			Action: "ticket.update", Source: "web", Actor: outbox.Actor{Type: "user", ID: fmt.Sprintf("u_%d", i)},
			Details: map[string]any{"pad": strings.Repeat("x", 200)}})
	}
	pool := setup(t, es)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &cancelOnWrite{ctx: ctx, cancel: cancel}
	var stderr bytes.Buffer
	err := run(ctx, pool, []string{"--workspace", "ws_a"}, stdout, &stderr)
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, stderr.String(), "export failed after")
	recs := exportEvents(t, pool)
	require.Len(t, recs, 1)
	require.Equal(t, false, recs[0].Details["complete"])
	require.Less(t, recs[0].Details["rows"], float64(2000))
	// The interrupted connection is destroyed, not returned; the pool does
	// that in the background.
	deadline := time.Now().Add(10 * time.Second)
	for pool.Stat().AcquiredConns() != 0 {
		require.True(t, time.Now().Before(deadline), "the interrupted connection is never released")
		time.Sleep(10 * time.Millisecond)
	}
	var one int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT 1`).Scan(&one))
}

func TestProgress(t *testing.T) {
	t.Parallel()
	var stderr syncbuf.Buffer
	cw := &events.CountingWriter{W: &bytes.Buffer{}}
	_, err := cw.Write([]byte("h\na,b\n\"c\nd\",e\n"))
	require.NoError(t, err)
	stop := startProgress(&stderr, cw, time.Now().Add(-time.Second), Options{forceProgress: true, progressEvery: 5 * time.Millisecond})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "2 rows, 14 B, ") {
		require.True(t, time.Now().Before(deadline), "no progress line: %q", stderr.String())
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	require.True(t, strings.HasSuffix(stderr.String(), "\r\033[K"), "the progress line is cleared")
	require.Regexp(t, `^\r\x1b\[K2 rows, 14 B, \d+ rows/s`, stderr.String())

	// Not a terminal, not forced: nothing.
	var quiet bytes.Buffer
	startProgress(&quiet, cw, time.Now(), Options{progressEvery: time.Millisecond})()
	require.Empty(t, quiet.String())

	require.Equal(t, "1.5 KiB", humanBytes(1536))
	require.Equal(t, "3.0 MiB", humanBytes(3<<20))
	require.Equal(t, "12 B", humanBytes(12))
}

// probeOnWrite runs probe on the first write, while the export streams.
type probeOnWrite struct {
	probe func()
	done  bool
	bytes.Buffer
}

func (p *probeOnWrite) Write(b []byte) (int, error) {
	if !p.done {
		p.done = true
		p.probe()
	}
	return p.Buffer.Write(b)
}

// TestRunIsRecordedFromTheFirstByte checks the command writes its export
// intent before any row (so a killed command is recorded by serve's sweep),
// removes it when it records the event, and exports nothing when the
// intent cannot be written.
func TestRunIsRecordedFromTheFirstByte(t *testing.T) {
	t.Parallel()
	pool := setup(t, sample())
	ctx := context.Background()
	var during []string
	out := &probeOnWrite{probe: func() {
		rows, err := pool.Query(ctx, `SELECT payload::jsonb->>'source' FROM audit_export_intents`)
		require.NoError(t, err)
		during, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
	}}
	require.NoError(t, run(ctx, pool, []string{"--workspace", "ws_a"}, out, io.Discard))
	require.Equal(t, []string{Source}, during, "the intent exists while rows stream")
	var left int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_export_intents`).Scan(&left))
	require.Zero(t, left)
	recs := exportEvents(t, pool)
	require.Len(t, recs, 1)
	require.Equal(t, Source, recs[0].Source)
	require.Equal(t, true, recs[0].Details["complete"])

	// Fail closed: without a way to write the intent, nothing is exported.
	_, err := pool.Exec(ctx, `ALTER TABLE audit_export_intents RENAME TO audit_export_intents_gone`)
	require.NoError(t, err)
	var refused bytes.Buffer
	err = run(ctx, pool, []string{"--workspace", "ws_a"}, &refused, io.Discard)
	require.ErrorContains(t, err, "not started")
	require.Zero(t, refused.Len())
}

func TestRunNDJSON(t *testing.T) {
	t.Parallel()
	pool := setup(t, sample())
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), pool, []string{"--workspace", "ws_a", "--format", "ndjson"}, &out, io.Discard))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 3)
	for _, l := range lines {
		var ev map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &ev), l)
		require.Equal(t, "ws_a", ev["workspace_id"])
		require.Contains(t, ev, "seq")
		require.Contains(t, ev, "hash")
	}
	recs := exportEvents(t, pool)
	require.Len(t, recs, 1)
	require.Equal(t, "ndjson", recs[0].Details["format"])
	require.EqualValues(t, 3, recs[0].Details["rows"])

	err := run(context.Background(), pool, []string{"--workspace", "ws_a", "--format", "xml"}, &out, io.Discard)
	require.ErrorContains(t, err, "--format")
}

// TestParseAcceptsBothSpellings: each filter flag also answers to its query
// parameter's spelling, and both add to the same filter.
func TestParseAcceptsBothSpellings(t *testing.T) {
	t.Parallel()
	req, err := Parse([]string{"--workspace", "ws_a",
		"--actor-email", "A@b.io", "--actor_email", "c@d.io",
		"--actor_id", "u_1", "--resource_type", "ticket", "--resource-type", "channel"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []string{"a@b.io", "c@d.io"}, req.filters.ActorEmails)
	require.Equal(t, []string{"u_1"}, req.filters.ActorIDs)
	require.ElementsMatch(t, []string{"ticket", "channel"}, req.filters.ResourceTypes)

	_, err = Parse([]string{"--workspace", "ws_a", "--resource_type", "Bad Type"}, io.Discard)
	require.ErrorContains(t, err, "--resource-type")
}
