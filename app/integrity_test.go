package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/checkpoints"
	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/integrity"
	"github.com/auditlog/auditlog/outbox/relay"
)

// TestIntegrityCommands drives keygen, checkpoint and verify (database and
// offline) through the command line, then tampers and sees verify exit 1.
func TestIntegrityCommands(t *testing.T) {
	url := testdb.NewURL(t)
	t.Setenv("AUDITLOG_DATABASE_URL", url)
	t.Setenv("AUDITLOG_LOG_LEVEL", "error")
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.key")
	t.Setenv("AUDITLOG_INTEGRITY_SIGNING_KEY_FILE", keyFile)

	code, out, errOut := runCLI(t, "integrity", "keygen")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "public_key=")
	code, _, errOut = runCLI(t, "integrity", "keygen")
	require.Equal(t, 1, code, "an existing key is not overwritten")
	require.Contains(t, errOut, "exists")

	code, _, errOut = runCLI(t, "migrate")
	require.Equal(t, 0, code, errOut)
	code, _, errOut = runCLI(t, "partitions", "ensure")
	require.Equal(t, 0, code, errOut)

	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	evs := make([]outbox.Event, 25)
	for i := range evs {
		evs[i] = outbox.Event{WorkspaceID: "ws_cli", Action: "member.invite", Source: "web",
			Actor: outbox.Actor{Type: "user", ID: "u_1"}, Details: map[string]any{"i": i}}
	}
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return rec.RecordBatch(ctx, tx, evs) }))
	rl, err := relay.New(pool, relay.Config{})
	require.NoError(t, err)
	n, err := rl.MoveOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 25, n)

	code, out, errOut = runCLI(t, "integrity", "checkpoint")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "workspace=ws_cli seq=25")

	code, out, errOut = runCLI(t, "verify", "--workspace", "ws_cli")
	require.Equal(t, 0, code, out+errOut)
	require.Contains(t, out, "ok: 25 chained events")
	require.Contains(t, out, "matched 1")

	// Offline: the export file and checkpoints as the API serves them.
	cps, err := integrity.List(ctx, pool, "ws_cli")
	require.NoError(t, err)
	cpFile := filepath.Join(dir, "checkpoints.json")
	writeJSON(t, cpFile, map[string]any{"data": cps})
	exportFile := writeExport(t, pool, dir, "ws_cli")
	code, out, errOut = runCLI(t, "verify", "--file", exportFile, "--public-key", keyFile+".pub", "--checkpoints", cpFile)
	require.Equal(t, 0, code, out+errOut)
	require.Contains(t, out, "ok: 25 chained events")

	export, err := os.ReadFile(exportFile)
	require.NoError(t, err)
	edited := strings.Replace(string(export), `"i":7`, `"i":8`, 1)
	require.NoError(t, os.WriteFile(exportFile, []byte(edited), 0o600))
	code, out, _ = runCLI(t, "verify", "--file", exportFile, "--public-key", keyFile+".pub", "--checkpoints", cpFile)
	require.Equal(t, 1, code)
	require.Contains(t, out, "BROKEN at seq 8: changed")

	code, _, errOut = runCLI(t, "verify", "--file", exportFile)
	require.Equal(t, 2, code, "offline verification needs a key and checkpoints")
	require.Contains(t, errOut, "--public-key")

	// Tamper in the database.
	_, err = pool.Exec(ctx, `SET session_replication_role = replica; UPDATE audit_events SET action = 'member.remove' WHERE seq = 3; RESET session_replication_role`)
	require.NoError(t, err)
	code, out, _ = runCLI(t, "verify", "--workspace", "ws_cli", "--json")
	require.Equal(t, 1, code)
	require.Contains(t, out, `"kind": "changed"`)
	require.Contains(t, out, `"seq": 3`)
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, raw, 0o600))
}

// TestVerifyFileWithPagedCheckpoints downloads the checkpoints a page at a
// time from the real handler (limit=1), appends each response body to one
// file as `curl >>` does, and verifies an export offline against it: every
// page counts (the first alone leaves the later events unanchored), a
// download appended twice verifies the same, and a saved error response or
// a single page still behave as before.
func TestVerifyFileWithPagedCheckpoints(t *testing.T) {
	pool := testdb.New(t)
	ctx := t.Context()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.key")
	signer, err := integrity.GenerateKeyFile(keyFile)
	require.NoError(t, err)
	log := slog.New(slog.DiscardHandler)
	cp, err := integrity.NewCheckpointer(pool, signer, log)
	require.NoError(t, err)
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	m, err := partitions.New(pool, partitions.Config{RetentionDays: 365, Premake: 1})
	require.NoError(t, err)
	_, err = m.Ensure(ctx)
	require.NoError(t, err)
	rl, err := relay.New(pool, relay.Config{})
	require.NoError(t, err)
	// Three rounds of 10 events, a checkpoint after each: seq 10, 20, 30.
	for round := range 3 {
		evs := make([]outbox.Event, 10)
		for i := range evs {
			evs[i] = outbox.Event{WorkspaceID: "ws_pages", Action: "member.invite", Source: "web",
				Actor: outbox.Actor{Type: "user", ID: "u_1"}, Details: map[string]any{"round": round, "i": i}}
		}
		require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return rec.RecordBatch(ctx, tx, evs) }))
		n, err := rl.MoveOnce(ctx)
		require.NoError(t, err)
		require.Equal(t, 10, n)
		_, err = cp.Checkpoint(ctx, "ws_pages", integrity.KindManual, false)
		require.NoError(t, err)
	}

	exportFile := writeExport(t, pool, dir, "ws_pages")

	// The download loop of README "Checkpoints", through the handler.
	h, err := checkpoints.New(pool, signer, log)
	require.NoError(t, err)
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(func(c *gin.Context) {
		auth.SetKey(c, auth.Key{WorkspaceID: "ws_pages", Scopes: []string{auth.ScopeRead}})
		c.Next()
	})
	h.Register(r.Group("/v1"))
	var bodies [][]byte
	target := "/v1/checkpoints?limit=1"
	for {
		w := httptest.NewRecorder()
		r.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		bodies = append(bodies, w.Body.Bytes())
		var page checkpoints.Response
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &page))
		if page.NextCursor == nil {
			break
		}
		target = "/v1/checkpoints?limit=1&cursor=" + *page.NextCursor
	}
	require.Len(t, bodies, 3)

	verify := func(name string, content []byte) (int, string) {
		t.Helper()
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, content, 0o600))
		code, out, errOut := runCLI(t, "verify", "--file", exportFile, "--public-key", keyFile+".pub", "--checkpoints", path)
		return code, out + errOut
	}
	all := bytes.Join(bodies, nil) // curl writes each body with no newline
	code, out := verify("pages.json", all)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "ok: 30 chained events")
	require.Contains(t, out, "checkpoints trusted 3, matched 3")
	require.NotContains(t, out, "not yet under a signed checkpoint")

	code, out = verify("first-page.json", bodies[0])
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "checkpoints trusted 1, matched 1", "a single response reads as before")
	require.Contains(t, out, "events from seq 11 on are chained but not yet under a signed checkpoint")

	code, out = verify("twice.json", bytes.Join([][]byte{all, all}, []byte("\n")))
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "checkpoints trusted 3, matched 3", "a download appended twice counts once")

	code, out = verify("with-error.json", append(bytes.Clone(bodies[0]), `{"error":{"code":"unavailable","message":"the database is unavailable"}}`...))
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "response 2: an error response was saved")
}

// TestReadCheckpoints reads --checkpoints files of one and of several
// JSON values.
func TestReadCheckpoints(t *testing.T) {
	cp := func(id int64, seq int64) string {
		return fmt.Sprintf(`{"id":%d,"workspace_id":"ws","seq":%d,"hash":"aa","created_at":"2026-01-01T00:00:00.000Z","kind":"manual","bridges":[],"key_id":null,"signature":null}`, id, seq)
	}
	page := func(next string, cps ...string) string {
		return `{"public_key":null,"key_id":null,"data":[` + strings.Join(cps, ",") + `],"next_cursor":` + next + `}`
	}
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content string
		ids     []int64
		err     string
	}{
		"one response":          {content: page("null", cp(1, 5), cp(2, 9)), ids: []int64{1, 2}},
		"bare array":            {content: "[" + cp(1, 5) + "]", ids: []int64{1}},
		"empty page":            {content: page("null"), ids: nil},
		"pages back to back":    {content: page(`"c1"`, cp(1, 5)) + page(`"c2"`, cp(2, 9)) + page("null", cp(3, 12)), ids: []int64{1, 2, 3}},
		"pages on lines":        {content: page(`"c1"`, cp(1, 5)) + "\n" + page("null", cp(2, 9)) + "\n", ids: []int64{1, 2}},
		"page and array":        {content: page(`"c1"`, cp(1, 5)) + " [" + cp(2, 9) + "]", ids: []int64{1, 2}},
		"appended twice":        {content: page("null", cp(1, 5), cp(2, 9)) + page("null", cp(1, 5), cp(2, 9)), ids: []int64{1, 2}},
		"id with two contents":  {content: page("null", cp(1, 5)) + page("null", cp(1, 6)), err: "checkpoint 1 appears twice with different contents"},
		"empty file":            {content: "", err: "the file is empty"},
		"only whitespace":       {content: " \n", err: "the file is empty"},
		"not JSON":              {content: "<html>", err: "response 1: want the JSON of GET /v1/checkpoints"},
		"truncated second page": {content: page(`"c1"`, cp(1, 5)) + `{"data":[`, err: "response 2: want the JSON"},
		"error response":        {content: `{"error":{"code":"unauthenticated","message":"bad key"}}`, err: "response 1: an error response was saved"},
		"object without data":   {content: `{"items":[]}`, err: `no "data"`},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".json")
		require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
		got, err := readCheckpoints(path)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, name)
			continue
		}
		require.NoError(t, err, name)
		ids := []int64(nil)
		for _, c := range got {
			ids = append(ids, c.ID)
		}
		require.Equal(t, tc.ids, ids, name)
	}
}

// writeExport writes workspace's events as an ndjson export file in dir,
// rendered as GET /v1/events/export?format=ndjson renders them, and returns
// its path.
func writeExport(t *testing.T, pool *pgxpool.Pool, dir, workspace string) string {
	t.Helper()
	var lines strings.Builder
	rows, err := pool.Query(t.Context(), `SELECT `+integrity.NDJSONLineSQL+` FROM audit_events e WHERE workspace_id = $1 ORDER BY seq`, workspace)
	require.NoError(t, err)
	for rows.Next() {
		var l string
		require.NoError(t, rows.Scan(&l))
		lines.WriteString(l + "\n")
	}
	require.NoError(t, rows.Err())
	path := filepath.Join(dir, "export.ndjson")
	require.NoError(t, os.WriteFile(path, []byte(lines.String()), 0o600))
	return path
}
