package e2e

import (
	"context"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/internal/testdb"
)

// TestRevokedKeyStopsAtOnce revokes a key with `auditlog keys revoke` (another
// process) while serve has it cached: serve refuses it within a second, not
// after the 30 s cache TTL, because it listens for revocations.
func TestRevokedKeyStopsAtOnce(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := testdb.NewURL(t)
	s := startService(t, "revoke", dbURL, nil)
	pool := openPool(t, dbURL, 2)
	key, secret, err := auth.Create(ctx, pool, "ws_revoke", "e2e", []string{auth.ScopeRead})
	require.NoError(t, err)
	c := newClient(t, secret)
	a := c.get(ctx, s.URL(""), "/v1/events")
	require.Equal(t, http.StatusOK, a.Status, a.String()) // now cached

	cmd := exec.CommandContext(ctx, binPath, "keys", "revoke", key.ID)
	cmd.Env = append(cmd.Environ(), "AUDITLOG_DATABASE_URL="+dbURL, "AUDITLOG_LOG_LEVEL=error")
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))

	took := waitFor(t, "the revoked key refused", 5*time.Second, func() (bool, error) {
		return c.get(ctx, s.URL(""), "/v1/events").Status == http.StatusUnauthorized, nil
	})
	t.Logf("revoked key refused %s after the revoke command returned", took)
	require.Less(t, took, time.Second)
}
