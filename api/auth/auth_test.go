package auth

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/internal/apitest"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestCreateListRevoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)

	k1, secret, err := Create(ctx, pool, "ws_acme", "  ci  ", []string{ScopeWrite, ScopeRead, ScopeWrite})
	require.NoError(t, err)
	require.Equal(t, "ci", k1.Name)
	require.Equal(t, []string{ScopeRead, ScopeWrite}, k1.Scopes)
	require.True(t, strings.HasPrefix(secret, SecretPrefix))
	require.Len(t, secret, secretLen)
	require.True(t, wellFormed(secret))

	k2, secret2, err := Create(ctx, pool, "ws_acme", "", []string{ScopeRead})
	require.NoError(t, err)
	require.NotEqual(t, secret, secret2)
	_, _, err = Create(ctx, pool, "ws_other", "x", []string{ScopeRead})
	require.NoError(t, err)

	// Only the hash is stored.
	var stored []byte
	require.NoError(t, pool.QueryRow(ctx, `SELECT secret_hash FROM api_keys WHERE id = $1`, k1.ID).Scan(&stored))
	h := hashSecret(secret)
	require.Equal(t, h[:], stored)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE position($1::bytea in secret_hash) > 0`, []byte(secret)).Scan(&n))
	require.Zero(t, n)

	keys, err := List(ctx, pool, "ws_acme")
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, k1.ID, keys[0].ID)
	require.Equal(t, k2.ID, keys[1].ID)
	require.Equal(t, "ws_acme", keys[0].WorkspaceID)
	require.Equal(t, []string{ScopeRead, ScopeWrite}, keys[0].Scopes)
	require.Nil(t, keys[0].LastUsedAt)
	require.Nil(t, keys[0].RevokedAt)
	require.False(t, keys[0].CreatedAt.IsZero())

	require.NoError(t, Revoke(ctx, pool, k1.ID))
	require.NoError(t, Revoke(ctx, pool, k1.ID), "revoking twice is a no-op")
	keys, err = List(ctx, pool, "ws_acme")
	require.NoError(t, err)
	require.NotNil(t, keys[0].RevokedAt)
	require.Nil(t, keys[1].RevokedAt)

	require.ErrorIs(t, Revoke(ctx, pool, "0193a000-0000-7000-8000-000000000000"), ErrNotFound)
	require.ErrorIs(t, Revoke(ctx, pool, "not-a-uuid"), ErrNotFound)

	empty, err := List(ctx, pool, "ws_none")
	require.NoError(t, err)
	require.Empty(t, empty)
}

func TestCreateValidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	for name, tc := range map[string]struct {
		ws, name string
		scopes   []string
		want     string
	}{
		"empty workspace":    {"", "n", []string{ScopeRead}, "workspace"},
		"bad workspace":      {"ws acme", "n", []string{ScopeRead}, "workspace"},
		"long workspace":     {strings.Repeat("w", 65), "n", []string{ScopeRead}, "workspace"},
		"no scopes":          {"ws", "n", nil, "at least one scope"},
		"unknown scope":      {"ws", "n", []string{"events:delete"}, "events:delete"},
		"long name":          {"ws", strings.Repeat("n", MaxNameLen+1), []string{ScopeRead}, "name"},
		"control in name":    {"ws", "a\x00b", []string{ScopeRead}, "name"},
		"invalid utf8 name":  {"ws", "a\xffb", []string{ScopeRead}, "name"},
		"empty scope string": {"ws", "n", []string{""}, "scope"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Create(ctx, pool, tc.ws, tc.name, tc.scopes)
			require.ErrorContains(t, err, tc.want)
		})
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM api_keys`).Scan(&n))
	require.Zero(t, n)
}

// authBundle is a gin engine with the middleware in front of routes that
// echo what they saw.
type authBundle struct {
	pool   *pgxpool.Pool
	auth   *Authenticator
	engine *gin.Engine
	now    atomic.Pointer[time.Time]
}

func setup(t *testing.T, opts Options) *authBundle {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	b := &authBundle{pool: testdb.New(t)}
	start := time.Now()
	b.now.Store(&start)
	opts.Now = func() time.Time { return *b.now.Load() }
	a, err := NewAuthenticator(b.pool, discardLogger(), opts)
	require.NoError(t, err)
	b.auth = a
	b.engine = gin.New()
	v1 := b.engine.Group("/v1", a.Handler())
	echo := func(c *gin.Context) {
		key, ok := KeyFrom(c)
		require.True(t, ok)
		info, _ := outbox.RequestInfoFrom(c.Request.Context())
		actor, _ := outbox.ActorFrom(c.Request.Context())
		c.JSON(200, gin.H{"key_id": key.ID, "workspace": info.WorkspaceID, "actor_type": actor.Type, "actor_id": actor.ID})
	}
	v1.GET("/read", Require(ScopeRead), echo)
	v1.POST("/write", Require(ScopeWrite), echo)
	return b
}

func (b *authBundle) advance(d time.Duration) {
	t := b.now.Load().Add(d)
	b.now.Store(&t)
}

func (b *authBundle) do(t *testing.T, method, path, authz string) (*httptest.ResponseRecorder, httperr.Body) {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	w := httptest.NewRecorder()
	b.engine.ServeHTTP(w, req)
	var body httperr.Body
	if w.Code >= 400 {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body), w.Body.String())
	}
	return w, body
}

func TestMiddlewareRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, Options{})
	_, readSecret, err := Create(ctx, b.pool, "ws_acme", "reader", []string{ScopeRead})
	require.NoError(t, err)
	revoked, revokedSecret, err := Create(ctx, b.pool, "ws_acme", "old", []string{ScopeRead, ScopeWrite})
	require.NoError(t, err)
	require.NoError(t, Revoke(ctx, b.pool, revoked.ID))
	unknown := newSecret()

	tests := []struct {
		name, method, path, authz string
		status                    int
		code, message, field      string
	}{
		{"no header", "GET", "/v1/read", "", 401, httperr.CodeUnauthenticated, "required", ""},
		{"basic scheme", "GET", "/v1/read", "Basic dXNlcjpwYXNz", 401, httperr.CodeUnauthenticated, "Bearer", ""},
		{"token scheme with real key", "GET", "/v1/read", "Token " + readSecret, 401, httperr.CodeUnauthenticated, "Bearer", ""},
		{"bearer without key", "GET", "/v1/read", "Bearer", 401, httperr.CodeUnauthenticated, "malformed", ""},
		{"bearer empty key", "GET", "/v1/read", "Bearer ", 401, httperr.CodeUnauthenticated, "malformed", ""},
		{"malformed key", "GET", "/v1/read", "Bearer abc", 401, httperr.CodeUnauthenticated, "malformed", ""},
		{"key with extra char", "GET", "/v1/read", "Bearer " + readSecret + "x", 401, httperr.CodeUnauthenticated, "malformed", ""},
		{"key with bad alphabet", "GET", "/v1/read", "Bearer " + readSecret[:len(readSecret)-1] + "+", 401, httperr.CodeUnauthenticated, "malformed", ""},
		{"unknown key", "GET", "/v1/read", "Bearer " + unknown, 401, httperr.CodeUnauthenticated, "not valid", ""},
		{"revoked key", "GET", "/v1/read", "Bearer " + revokedSecret, 401, httperr.CodeUnauthenticated, "revoked", ""},
		{"missing scope", "POST", "/v1/write", "Bearer " + readSecret, 403, httperr.CodeForbidden, ScopeWrite, ""},
		{"other workspace in query", "GET", "/v1/read?workspace_id=ws_other", "Bearer " + readSecret, 403, httperr.CodeForbidden, "another workspace", "workspace_id"},
		{"other workspace repeated in query", "GET", "/v1/read?workspace_id=ws_acme&workspace_id=ws_other", "Bearer " + readSecret, 403, httperr.CodeForbidden, "another workspace", "workspace_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, body := b.do(t, tt.method, tt.path, tt.authz)
			require.Equal(t, tt.status, w.Code, w.Body.String())
			require.Equal(t, tt.code, body.Error.Code)
			require.Contains(t, body.Error.Message, tt.message)
			require.Equal(t, tt.field, body.Error.Field)
			if tt.status == 401 {
				require.Equal(t, `Bearer realm="auditlog"`, w.Header().Get("WWW-Authenticate"))
			}
		})
	}
}

func TestMiddlewareAccepts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, Options{})
	key, secret, err := Create(ctx, b.pool, "ws_acme", "svc", []string{ScopeRead, ScopeWrite})
	require.NoError(t, err)

	for _, authz := range []string{"Bearer " + secret, "bearer " + secret, "BEARER  " + secret + " "} {
		w, _ := b.do(t, "GET", "/v1/read?workspace_id=ws_acme", authz)
		require.Equal(t, 200, w.Code, w.Body.String())
		var got map[string]string
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &got))
		require.Equal(t, map[string]string{"key_id": key.ID, "workspace": "ws_acme", "actor_type": "api_key", "actor_id": key.ID}, got)
	}
	w, _ := b.do(t, "POST", "/v1/write", "Bearer "+secret)
	require.Equal(t, 200, w.Code)

	keys, err := List(ctx, b.pool, "ws_acme")
	require.NoError(t, err)
	require.NotNil(t, keys[0].LastUsedAt, "last_used_at is set on first use")
}

func TestLastUsedAtAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, Options{CacheTTL: -1})
	key, secret, err := Create(ctx, b.pool, "ws_acme", "svc", []string{ScopeRead})
	require.NoError(t, err)
	lastUsed := func() time.Time {
		var ts time.Time
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT last_used_at FROM api_keys WHERE id = $1`, key.ID).Scan(&ts))
		return ts
	}
	w, _ := b.do(t, "GET", "/v1/read", "Bearer "+secret)
	require.Equal(t, 200, w.Code)
	first := lastUsed()

	// Within the interval: not touched again. Pretend it was used long ago
	// so a touch would be visible.
	_, err = b.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() - interval '1 hour' WHERE id = $1`, key.ID)
	require.NoError(t, err)
	b.advance(30 * time.Second)
	w, _ = b.do(t, "GET", "/v1/read", "Bearer "+secret)
	require.Equal(t, 200, w.Code)
	require.True(t, lastUsed().Before(first), "touched within the interval")

	// After the interval: touched.
	b.advance(31 * time.Second)
	w, _ = b.do(t, "GET", "/v1/read", "Bearer "+secret)
	require.Equal(t, 200, w.Code)
	require.False(t, lastUsed().Before(first), "not touched after the interval")
}

func TestRevocationAndCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("cached key works until the TTL ends", func(t *testing.T) {
		t.Parallel()
		b := setup(t, Options{CacheTTL: 30 * time.Second})
		key, secret, err := Create(ctx, b.pool, "ws_acme", "svc", []string{ScopeRead})
		require.NoError(t, err)
		w, _ := b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 200, w.Code)
		require.NoError(t, Revoke(ctx, b.pool, key.ID))
		b.advance(29 * time.Second)
		w, _ = b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 200, w.Code, "within the TTL the cached key still works")
		b.advance(2 * time.Second)
		w, body := b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 401, w.Code)
		require.Contains(t, body.Error.Message, "revoked")
	})
	t.Run("a listening server forgets a revoked key at once", func(t *testing.T) {
		t.Parallel()
		b := setup(t, Options{CacheTTL: time.Hour})
		lctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); b.auth.Listen(lctx) }()
		t.Cleanup(func() { stop(); <-done })
		// Wait until the LISTEN is in place, so what follows goes through
		// the notification and not the cache reset of a (re)connection.
		var dbName string
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName))
		require.Eventually(t, func() bool {
			var n int
			err := b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query = $2`,
				dbName, listenSQL).Scan(&n)
			return err == nil && n == 1
		}, 10*time.Second, 10*time.Millisecond)

		key, secret, err := Create(ctx, b.pool, "ws_acme", "svc", []string{ScopeRead})
		require.NoError(t, err)
		w, _ := b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 200, w.Code)
		require.NoError(t, Revoke(ctx, b.pool, key.ID))
		// Without the notification the cached key would work for an hour.
		require.Eventually(t, func() bool {
			w, _ := b.do(t, "GET", "/v1/read", "Bearer "+secret)
			return w.Code == 401
		}, 5*time.Second, 5*time.Millisecond)
	})
	t.Run("without cache revocation is immediate", func(t *testing.T) {
		t.Parallel()
		b := setup(t, Options{CacheTTL: -1})
		key, secret, err := Create(ctx, b.pool, "ws_acme", "svc", []string{ScopeRead})
		require.NoError(t, err)
		w, _ := b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 200, w.Code)
		require.NoError(t, Revoke(ctx, b.pool, key.ID))
		w, _ = b.do(t, "GET", "/v1/read", "Bearer "+secret)
		require.Equal(t, 401, w.Code)
	})
}

func TestDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	gin.SetMode(gin.ReleaseMode)
	pool := apitest.DeadPool(t)
	engine := gin.New()
	authn, err := NewAuthenticator(pool, discardLogger(), Options{})
	require.NoError(t, err)
	engine.GET("/v1/read", authn.Handler(), func(c *gin.Context) { c.Status(200) })
	req := httptest.NewRequest("GET", "/v1/read", nil)
	req.Header.Set("Authorization", "Bearer "+newSecret())
	w := httptest.NewRecorder()
	engine.ServeHTTP(w, req)
	require.Equal(t, 503, w.Code, w.Body.String())
	var body httperr.Body
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body))
	require.Equal(t, httperr.CodeUnavailable, body.Error.Code)
}

func TestRequireWithoutMiddleware(t *testing.T) {
	t.Parallel()
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	engine.GET("/", Require(ScopeRead), func(c *gin.Context) { c.Status(200) })
	w := httptest.NewRecorder()
	engine.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	require.Equal(t, 401, w.Code)
}
