package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/outbox"
)

// Defaults of Options.
const (
	CacheTTLDefault      = 30 * time.Second
	TouchIntervalDefault = time.Minute
	LookupTimeoutDefault = 5 * time.Second
)

// maxCachedKeys triggers a sweep of expired cache entries; the cache only
// ever holds keys that verified, so it is bounded by the number of keys.
const maxCachedKeys = 4096

// touchTimeout bounds the last_used_at update, which must never hold up a
// request for long.
const touchTimeout = 2 * time.Second

// Options configure an Authenticator. Zero values take the defaults.
type Options struct {
	// CacheTTL is how long a verified key is trusted without asking the
	// database again. A revoked key leaves the cache at once on a server
	// running Listen; without it, or while Listen is disconnected, it keeps
	// working for at most this long. Default 30s; negative disables the
	// cache.
	CacheTTL time.Duration
	// TouchInterval is the least time between two last_used_at updates of
	// one key by one server. Default 1m.
	TouchInterval time.Duration
	// LookupTimeout bounds the database look-up of a key not in the cache;
	// past it the request is answered 503. Default 5s.
	LookupTimeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Authenticator checks API keys on requests.
type Authenticator struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	opts   Options

	mu      sync.Mutex
	cache   map[[sha256.Size]byte]cachedKey
	touched map[string]time.Time // key id → last last_used_at update
}

type cachedKey struct {
	key     Key
	expires time.Time
}

// NewAuthenticator returns an Authenticator reading keys from pool.
func NewAuthenticator(pool *pgxpool.Pool, logger *slog.Logger, opts Options) (*Authenticator, error) {
	if pool == nil {
		return nil, errors.New("auth: pool is required")
	}
	if logger == nil {
		return nil, errors.New("auth: logger is required")
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = CacheTTLDefault
	}
	if opts.TouchInterval == 0 {
		opts.TouchInterval = TouchIntervalDefault
	}
	if opts.TouchInterval < 0 {
		return nil, fmt.Errorf("auth: TouchInterval must not be negative, got %s", opts.TouchInterval)
	}
	if opts.LookupTimeout == 0 {
		opts.LookupTimeout = LookupTimeoutDefault
	}
	if opts.LookupTimeout < 0 {
		return nil, fmt.Errorf("auth: LookupTimeout must be positive, got %s", opts.LookupTimeout)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Authenticator{
		pool:    pool,
		logger:  logger,
		opts:    opts,
		cache:   map[[sha256.Size]byte]cachedKey{},
		touched: map[string]time.Time{},
	}, nil
}

const lookupKeySQL = `
SELECT id, workspace_id, name, scopes, revoked_at
FROM api_keys
WHERE secret_hash = $1`

const touchKeySQL = `
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)`

// Handler returns middleware that requires "Authorization: Bearer <key>".
// A missing, malformed, unknown or revoked key is answered 401 with
// WWW-Authenticate; a database failure 503. On success the key is available
// through KeyFrom, and the request context carries the key's workspace
// (outbox.RequestInfo.WorkspaceID) and the key as the actor
// (type api_key) for events recorded while serving it. A workspace_id in
// the query string that is not the key's is answered 403.
func (a *Authenticator) Handler() gin.HandlerFunc {
	return func(c *gin.Context) {
		secret, msg := bearerToken(c.GetHeader("Authorization"))
		if msg != "" {
			unauthorized(c, msg)
			return
		}
		key, ok := a.authenticate(c, secret)
		if !ok {
			return
		}
		SetKey(c, key)

		ctx := c.Request.Context()
		info, _ := outbox.RequestInfoFrom(ctx)
		info.WorkspaceID = key.WorkspaceID
		ctx = outbox.WithRequestInfo(ctx, info)
		ctx = outbox.WithActor(ctx, outbox.Actor{Type: outbox.ActorAPIKey, ID: key.ID, Name: key.Name})
		c.Request = c.Request.WithContext(ctx)

		for _, ws := range c.QueryArray("workspace_id") {
			if !SameWorkspace(c, "workspace_id", ws) {
				return
			}
		}
		c.Next()
	}
}

// bearerToken extracts the secret from an Authorization header, or says what
// is wrong with it.
func bearerToken(header string) (secret, problem string) {
	if header == "" {
		return "", "an API key is required: Authorization: Bearer <key>"
	}
	scheme, token, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", "the Authorization header must use the Bearer scheme"
	}
	token = strings.TrimSpace(token)
	if !wellFormed(token) {
		return "", "the API key is malformed"
	}
	return token, ""
}

// authenticate finds the key for secret, from the cache or the database,
// and answers the request itself when there is none.
func (a *Authenticator) authenticate(c *gin.Context, secret string) (Key, bool) {
	hash := hashSecret(secret)
	now := a.opts.Now()
	if key, ok := a.cached(hash, now); ok {
		a.touch(c.Request.Context(), key.ID, now)
		return key, true
	}

	var (
		id        uuid.UUID
		key       Key
		revokedAt *time.Time
	)
	ctx, cancel := context.WithTimeout(c.Request.Context(), a.opts.LookupTimeout)
	err := a.pool.QueryRow(ctx, lookupKeySQL, hash[:]).
		Scan(&id, &key.WorkspaceID, &key.Name, &key.Scopes, &revokedAt)
	cancel()
	if errors.Is(err, pgx.ErrNoRows) {
		unauthorized(c, "the API key is not valid")
		return Key{}, false
	}
	if err != nil {
		a.logger.Warn("auth: looking up api key failed", "error", err)
		dberr.Abort(c, err, "checking the API key")
		return Key{}, false
	}
	// The look-up is by the SHA-256 of a 256-bit secret: its timing can
	// only tell an attacker about hashes, never about a secret.
	if revokedAt != nil {
		unauthorized(c, "the API key has been revoked")
		return Key{}, false
	}
	key.ID = id.String()
	a.store(hash, key, now)
	a.touch(c.Request.Context(), key.ID, now)
	return key, true
}

func (a *Authenticator) cached(hash [sha256.Size]byte, now time.Time) (Key, bool) {
	if a.opts.CacheTTL < 0 {
		return Key{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.cache[hash]
	if !ok || !now.Before(e.expires) {
		return Key{}, false
	}
	return e.key, true
}

func (a *Authenticator) store(hash [sha256.Size]byte, key Key, now time.Time) {
	if a.opts.CacheTTL < 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCachedKeys {
		for h, e := range a.cache {
			if !now.Before(e.expires) {
				delete(a.cache, h)
			}
		}
	}
	a.cache[hash] = cachedKey{key: key, expires: now.Add(a.opts.CacheTTL)}
}

// touch records the key's use in last_used_at at most once per
// TouchInterval per server. It runs in the request (a single-row update by
// primary key, once a minute per key) and its failure is logged, never
// failing the request.
func (a *Authenticator) touch(ctx context.Context, id string, now time.Time) {
	a.mu.Lock()
	last, ok := a.touched[id]
	due := !ok || now.Sub(last) >= a.opts.TouchInterval
	if due {
		a.touched[id] = now
	}
	a.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), touchTimeout)
	defer cancel()
	interval := fmt.Sprintf("%d milliseconds", a.opts.TouchInterval.Milliseconds())
	if _, err := a.pool.Exec(ctx, touchKeySQL, id, interval); err != nil {
		a.logger.Warn("auth: updating api key last_used_at failed", "key_id", id, "error", err)
	}
}

// Require returns middleware that answers 403 unless the authenticated key
// holds scope (401 if no key was authenticated at all).
func Require(scope string) gin.HandlerFunc {
	return func(c *gin.Context) {
		key, ok := KeyFrom(c)
		if !ok {
			unauthorized(c, "an API key is required: Authorization: Bearer <key>")
			return
		}
		if !key.Has(scope) {
			httperr.Abort(c, http.StatusForbidden, httperr.CodeForbidden,
				fmt.Sprintf("the API key lacks the %s scope", scope), "")
			return
		}
		c.Next()
	}
}

// SameWorkspace reports whether workspaceID, taken from the request field
// named field, is empty or the authenticated key's workspace. Otherwise it
// answers 403 naming field and returns false. Handlers take the workspace
// only from the key; this refuses a request that asks for another one.
func SameWorkspace(c *gin.Context, field, workspaceID string) bool {
	key, ok := KeyFrom(c)
	if !ok {
		unauthorized(c, "an API key is required: Authorization: Bearer <key>")
		return false
	}
	ws := strings.TrimSpace(workspaceID)
	if ws == "" || ws == key.WorkspaceID {
		return true
	}
	httperr.Abort(c, http.StatusForbidden, httperr.CodeForbidden,
		"the API key belongs to another workspace; it cannot access "+httperr.Quote(ws), field)
	return false
}

func unauthorized(c *gin.Context, msg string) {
	c.Header("WWW-Authenticate", `Bearer realm="auditlog"`)
	httperr.Abort(c, http.StatusUnauthorized, httperr.CodeUnauthenticated, msg, "")
}
