package checkpoints

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox/integrity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, h *Handler, key auth.Key) (int, Response) {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(func(c *gin.Context) { auth.SetKey(c, key); c.Next() })
	h.Register(r.Group("/v1"))
	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/checkpoints", nil))
	var resp Response
	if w.Code == http.StatusOK {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp), w.Body.String())
	}
	return w.Code, resp
}

func TestListsTheKeysWorkspaceOnly(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	log := slog.New(slog.DiscardHandler)
	signer, err := integrity.GenerateKeyFile(filepath.Join(t.TempDir(), "k"))
	require.NoError(t, err)
	cp, err := integrity.NewCheckpointer(pool, signer, log)
	require.NoError(t, err)
	for _, ws := range []string{"ws_a", "ws_b", "ws_a"} {
		_, err := cp.Checkpoint(t.Context(), ws, integrity.KindManual, true)
		require.NoError(t, err)
	}
	h, err := New(pool, signer, log)
	require.NoError(t, err)

	code, resp := get(t, h, auth.Key{WorkspaceID: "ws_a", Scopes: []string{auth.ScopeRead}})
	require.Equal(t, http.StatusOK, code)
	require.Len(t, resp.Data, 2)
	require.Equal(t, integrity.EncodePublicKey(signer.PublicKey()), *resp.PublicKey)
	require.Equal(t, signer.KeyID(), *resp.KeyID)
	for _, c := range resp.Data {
		require.Equal(t, "ws_a", c.WorkspaceID)
		require.NoError(t, c.VerifySignature(signer.PublicKey()), "the served checkpoint verifies as served")
	}
	require.Less(t, resp.Data[0].ID, resp.Data[1].ID, "oldest first")

	code, _ = get(t, h, auth.Key{WorkspaceID: "ws_a", Scopes: []string{auth.ScopeWrite}})
	require.Equal(t, http.StatusForbidden, code, "events:read is required")

	unsigned, err := New(pool, nil, log)
	require.NoError(t, err)
	code, resp = get(t, unsigned, auth.Key{WorkspaceID: "ws_none", Scopes: []string{auth.ScopeRead}})
	require.Equal(t, http.StatusOK, code)
	require.Nil(t, resp.PublicKey)
	require.NotNil(t, resp.Data)
	require.Empty(t, resp.Data)
}
