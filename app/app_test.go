package app

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// runCLI runs the command line as the binary would and returns its exit
// code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestVersionAndUsage(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "auditlog "), out)

	code, _, errOut := runCLI(t, "frobnicate")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `unknown command "frobnicate"`)

	code, _, errOut = runCLI(t, "partitions", "compact")
	require.Equal(t, 2, code, errOut)
}

// TestUsageErrorsExitTwo: an unknown flag, a missing argument or one
// malformed in itself exits 2, and is told before any database is reached
// (the URL here leads nowhere, which would fail with 1).
func TestUsageErrorsExitTwo(t *testing.T) {
	t.Setenv("AUDITLOG_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none?connect_timeout=1")
	for _, args := range [][]string{
		{"export"},
		{"export", "--workspace", "ws_a", "--bogus"},
		{"export", "--workspace", "ws_a", "--format", "xml"},
		{"export", "--workspace", "ws_a", "--from", "yesterday"},
		{"export", "--workspace", "ws_a", "--actor_email", "nobody"},
		{"keys", "create", "--workspace", "ws_a", "--bogus"},
		{"keys", "list", "--workspace"},
		{"partitions", "list", "--bogus"},
		{"deadletters", "retry", "--bogus"},
		{"verify", "--bogus"},
		{"integrity", "checkpoint", "--bogus"},
		{"bench", "--bogus"},
		{"bench", "pipeline", "--runs", "0"},
	} {
		code, _, errOut := runCLI(t, args...)
		require.Equal(t, 2, code, "%v: %s", args, errOut)
		// Reported once: the usage and the error, not the flag package's
		// own report of the same mistake besides.
		require.Equal(t, 1, strings.Count(errOut, "Usage:"), "%v: %s", args, errOut)
		require.Equal(t, 1, strings.Count(errOut, "error: "), "%v: %s", args, errOut)
		require.NotContains(t, errOut, "Usage of", args)
	}
	code, _, errOut := runCLI(t, "export", "-h")
	require.Equal(t, 0, code, "-h is no mistake")
	require.Contains(t, errOut, "-workspace", "-h shows the command's flags")
}

func TestBadConfigNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte("relay:\n  batch_size: 0\n"), 0o600))
	code, _, errOut := runCLI(t, "migrate", "--config", path)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "relay.batch_size")

	t.Setenv("AUDITLOG_HTTP_ADRR", ":1")
	code, _, errOut = runCLI(t, "version") // version needs no config
	require.Equal(t, 0, code, errOut)
	code, _, errOut = runCLI(t, "migrate")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "AUDITLOG_HTTP_ADRR")
}

// TestCommandsAgainstDatabase drives migrate, keys, partitions (with
// --dry-run changing nothing) and deadletters against a real database.
func TestCommandsAgainstDatabase(t *testing.T) {
	url := testdb.NewURL(t)
	t.Setenv("AUDITLOG_DATABASE_URL", url)
	t.Setenv("AUDITLOG_LOG_LEVEL", "error")
	ctx := context.Background()

	code, out, errOut := runCLI(t, "migrate")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "applied 0 migration(s)", "the test database is migrated already")

	// keys
	code, secret, errOut := runCLI(t, "keys", "create", "--workspace", "ws_cli", "--scopes", "events:read", "--name", "auditor")
	require.Equal(t, 0, code, errOut)
	require.True(t, strings.HasPrefix(strings.TrimSpace(secret), "alk_"), secret)
	code, out, errOut = runCLI(t, "keys", "list", "--workspace", "ws_cli")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "auditor")
	require.NotContains(t, out, strings.TrimSpace(secret), "secrets are shown once")
	fields := strings.Fields(strings.Split(out, "\n")[1])
	code, _, errOut = runCLI(t, "keys", "revoke", fields[0])
	require.Equal(t, 0, code, errOut)
	code, _, _ = runCLI(t, "keys", "create", "--workspace", "ws_cli", "--scopes", "events:admin")
	require.Equal(t, 1, code)

	// partitions: ensure, list, prune --dry-run then prune
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	code, _, errOut = runCLI(t, "partitions", "ensure")
	require.Equal(t, 0, code, errOut)
	_, err = conn.Exec(ctx, `CREATE TABLE audit_events_p20000101 PARTITION OF audit_events FOR VALUES FROM ('2000-01-01') TO ('2000-02-01')`)
	require.NoError(t, err)
	countParts := func() int {
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass`).Scan(&n))
		return n
	}
	before := countParts()
	code, out, errOut = runCLI(t, "partitions", "list")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "audit_events_p20000101")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "audit_events_p20000101 ") {
			require.Equal(t, "?", strings.Fields(line)[3], "never analysed: no estimate, not -1")
		}
	}
	code, out, errOut = runCLI(t, "partitions", "prune", "--dry-run")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "would drop 1 partition(s)")
	require.Contains(t, out, "audit_events_p20000101")
	require.Equal(t, before, countParts(), "--dry-run changes nothing")
	code, out, errOut = runCLI(t, "partitions", "prune")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "dropped 1 partition(s)")
	require.Equal(t, before-1, countParts())

	// deadletters: one that has failed twice already.
	_, err = conn.Exec(ctx, `INSERT INTO audit_dead_letters (pos, error, attempts, id, workspace_id,
		occurred_at, recorded_at, action, actor_type, source)
		VALUES (424242, 'boom', 2, '01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77', 'ws_cli', now(), now(), 'poison.row', 'system', 'system')`)
	require.NoError(t, err)
	code, out, errOut = runCLI(t, "deadletters", "list")
	require.Equal(t, 0, code, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	require.Equal(t, []string{"POS", "FAILED", "AT", "ATTEMPTS", "WORKSPACE", "EVENT", "ID", "ACTION", "ERROR"}, strings.Fields(lines[0]))
	row := strings.Fields(lines[1])
	require.Equal(t, []string{"424242", "2", "ws_cli", "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77", "poison.row", "boom"},
		[]string{row[0], row[2], row[3], row[4], row[5], row[6]}, out)
	code, _, _ = runCLI(t, "deadletters", "retry")
	require.Equal(t, 2, code, "retry needs --all or positions")
	code, out, errOut = runCLI(t, "deadletters", "retry", "--all")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "moved 1")
	var attempts int
	require.NoError(t, conn.QueryRow(ctx, `SELECT attempts FROM audit_outbox WHERE pos = 424242`).Scan(&attempts))
	require.Equal(t, 2, attempts, "the outbox row carries its count of failures")
}
