package app

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

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
	var lines strings.Builder
	rows, err := pool.Query(ctx, `SELECT `+integrity.NDJSONLineSQL+` FROM audit_events e WHERE workspace_id = 'ws_cli' ORDER BY seq`)
	require.NoError(t, err)
	for rows.Next() {
		var l string
		require.NoError(t, rows.Scan(&l))
		lines.WriteString(l + "\n")
	}
	require.NoError(t, rows.Err())
	exportFile := filepath.Join(dir, "export.ndjson")
	require.NoError(t, os.WriteFile(exportFile, []byte(lines.String()), 0o600))
	code, out, errOut = runCLI(t, "verify", "--file", exportFile, "--public-key", keyFile+".pub", "--checkpoints", cpFile)
	require.Equal(t, 0, code, out+errOut)
	require.Contains(t, out, "ok: 25 chained events")

	edited := strings.Replace(lines.String(), `"i":7`, `"i":8`, 1)
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
