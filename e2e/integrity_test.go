package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

const integrityWorkspace = "ws_integrity"

// TestIntegrityThroughTheBinary runs serve with a signing key and a
// one-second checkpoint schedule: events ingested over HTTP are chained,
// a scheduled checkpoint signs the head, GET /v1/checkpoints serves it, and
// the ndjson export verifies offline with `auditlog verify --file`; an edited
// copy of the export does not.
func TestIntegrityThroughTheBinary(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dbURL := testdb.NewURL(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.key")
	out, err := exec.CommandContext(ctx, binPath, "integrity", "keygen", "--out", keyFile).CombinedOutput()
	require.NoError(t, err, string(out))

	s := startService(t, "integrity", dbURL, map[string]string{
		"AUDITLOG_INTEGRITY_SIGNING_KEY_FILE":    keyFile,
		"AUDITLOG_INTEGRITY_CHECKPOINT_SCHEDULE": "@every 1s",
	})
	pool := openPool(t, dbURL, 2)
	c := newClient(t, createKey(t, pool, integrityWorkspace))
	for range 3 {
		a := c.post(ctx, s.URL(""), newBatch("ticket.update", 40))
		require.True(t, a.accepted(), a.String())
	}
	waitDrained(t, pool, time.Minute)

	// A scheduled checkpoint covering all 120 events.
	var cps struct {
		PublicKey *string `json:"public_key"`
		KeyID     *string `json:"key_id"`
		Data      []struct {
			Seq  int64  `json:"seq"`
			Kind string `json:"kind"`
		} `json:"data"`
	}
	var raw []byte
	waitFor(t, "a scheduled checkpoint of the last event", 30*time.Second, func() (bool, error) {
		a := c.get(ctx, s.URL(""), "/v1/checkpoints")
		if a.Status != http.StatusOK {
			return false, nil
		}
		raw = a.Body
		if err := json.Unmarshal(a.Body, &cps); err != nil {
			return false, err
		}
		var last int64
		if err := pool.QueryRow(ctx, `SELECT max(seq) FROM audit_events WHERE workspace_id = $1`, integrityWorkspace).Scan(&last); err != nil {
			return false, err
		}
		n := len(cps.Data)
		return n > 0 && cps.Data[n-1].Seq == last && cps.Data[n-1].Kind == "scheduled", nil
	})
	require.NotNil(t, cps.PublicKey)
	cpFile := filepath.Join(dir, "checkpoints.json")
	require.NoError(t, os.WriteFile(cpFile, raw, 0o600))

	exp := c.get(ctx, s.URL(""), "/v1/events/export?format=ndjson")
	require.Equal(t, http.StatusOK, exp.Status, exp.String())
	require.Equal(t, 120, strings.Count(string(exp.Body), "\n"))
	exportFile := filepath.Join(dir, "export.ndjson")
	require.NoError(t, os.WriteFile(exportFile, exp.Body, 0o600))

	verify := func(file string) (int, string) {
		cmd := exec.CommandContext(ctx, binPath, "verify", "--file", file, "--public-key", keyFile+".pub", "--checkpoints", cpFile)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		require.NoError(t, err, string(out))
		return 0, string(out)
	}
	code, text := verify(exportFile)
	require.Equal(t, 0, code, text)
	require.Contains(t, text, "ok: 120 chained events")

	edited := strings.Replace(string(exp.Body), `"ticket.update"`, `"ticket.delete"`, 1)
	editedFile := filepath.Join(dir, "edited.ndjson")
	require.NoError(t, os.WriteFile(editedFile, []byte(edited), 0o600))
	code, text = verify(editedFile)
	require.Equal(t, 1, code, text)
	require.Contains(t, text, "BROKEN at seq")
	require.Contains(t, text, "changed")
}
