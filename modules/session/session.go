// Package session authenticates members of the in-app helpdesk. A member
// sends `Authorization: Bearer mem_...`; only the token's SHA-256 is stored
// (members.token_hash), so a leaked table does not leak tokens. The
// middleware loads the member and puts it on the request as the audit actor
// (outbox.WithActor) and as the request's workspace (outbox.RequestInfo), so
// every event the modules record names who acted and in which workspace.
//
// Tokens carry 256 random bits, so looking one up by its hash needs no
// constant-time comparison: the hash of a guess reveals nothing about a
// stored token.
package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/outbox"
)

// TokenPrefix starts every member token, so a leaked one is recognisable
// (and not mistaken for an API key).
const TokenPrefix = "mem_"

// SourceWeb is the source of events recorded by in-app requests when the
// request middleware set none.
const SourceWeb = "web"

// Role is a member's role in its workspace.
type Role string

// Roles, from least to most privileged.
const (
	RoleViewer Role = "viewer"
	RoleAgent  Role = "agent"
	RoleAdmin  Role = "admin"
	RoleOwner  Role = "owner"
)

// rank orders roles; 0 is not a role.
func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleAgent:
		return 2
	case RoleAdmin:
		return 3
	case RoleOwner:
		return 4
	}
	return 0
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// AtLeast reports whether r is as privileged as min or more.
func (r Role) AtLeast(min Role) bool { return r.Valid() && r.rank() >= min.rank() }

// Member is an authenticated member. It never carries the token.
type Member struct {
	ID          uuid.UUID
	WorkspaceID string
	Email       string
	Name        string
	Role        Role
}

// Actor is the member as the audit actor of the events it causes.
func (m Member) Actor() outbox.Actor {
	return outbox.Actor{Type: outbox.ActorUser, ID: m.ID.String(), Email: m.Email, Name: m.Name}
}

// ErrNotFound is returned when no member matches.
var ErrNotFound = errors.New("member not found")

// Querier is what member lookups need: a pool, a connection or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const (
	selectMemberByTokenSQL = `
SELECT id, workspace_id, email, name, role FROM members WHERE token_hash = $1`
	selectMemberBySlackSQL = `
SELECT id, workspace_id, email, name, role FROM members WHERE slack_user_id = $1`
	selectMemberByIDSQL = `
SELECT id, workspace_id, email, name, role FROM members WHERE workspace_id = $1 AND id = $2`
)

func scanMember(row pgx.Row) (Member, error) {
	var m Member
	var role string
	if err := row.Scan(&m.ID, &m.WorkspaceID, &m.Email, &m.Name, &role); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Member{}, ErrNotFound
		}
		return Member{}, err
	}
	m.Role = Role(role)
	return m, nil
}

// BySlackUser returns the member whose slack_user_id is slackUserID.
func BySlackUser(ctx context.Context, q Querier, slackUserID string) (Member, error) {
	m, err := scanMember(q.QueryRow(ctx, selectMemberBySlackSQL, slackUserID))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Member{}, fmt.Errorf("looking up member by slack user: %w", err)
	}
	return m, err
}

// ByID returns the member id of workspace ws.
func ByID(ctx context.Context, q Querier, ws string, id uuid.UUID) (Member, error) {
	m, err := scanMember(q.QueryRow(ctx, selectMemberByIDSQL, ws, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Member{}, fmt.Errorf("looking up member: %w", err)
	}
	return m, err
}

// NewToken returns a fresh member token and the hash to store for it.
func NewToken() (token string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("generating member token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return token, HashToken(token), nil
}

// HashToken is the stored form of a token.
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// Auth is the session middleware's dependencies.
type Auth struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
}

// New returns the session authenticator over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger) (*Auth, error) {
	if err := web.CheckDeps("session", pool, logger); err != nil {
		return nil, err
	}
	return &Auth{pool: pool, logger: logger}, nil
}

const ginMemberKey = "auditlog.session.member"

// MemberFrom returns the member the middleware authenticated.
func MemberFrom(c *gin.Context) (Member, bool) {
	v, ok := c.Get(ginMemberKey)
	if !ok {
		return Member{}, false
	}
	m, ok := v.(Member)
	return m, ok
}

// Middleware authenticates the member token and puts the member on the
// request: on the gin context (MemberFrom) and on the request context as the
// audit actor and workspace. Request info already there (source, IP, user
// agent, request id from the client-IP middleware) is kept; a missing
// source becomes "web". No or a bad token is 401.
func (a *Auth) Middleware() gin.HandlerFunc {
	return func(c *gin.Context) {
		token, ok := bearer(c.GetHeader("Authorization"))
		if !ok {
			c.Header("WWW-Authenticate", `Bearer realm="auditlog-app"`)
			httperr.Abort(c, http.StatusUnauthorized, httperr.CodeUnauthenticated,
				"a member token is required: Authorization: Bearer mem_...", "")
			return
		}
		m, err := scanMember(a.pool.QueryRow(c.Request.Context(), selectMemberByTokenSQL, HashToken(token)))
		if errors.Is(err, ErrNotFound) {
			httperr.Abort(c, http.StatusUnauthorized, httperr.CodeUnauthenticated, "the member token is not valid", "")
			return
		}
		if err != nil {
			if dberr.Classify(err) == dberr.Internal {
				a.logger.ErrorContext(c.Request.Context(), "session lookup failed", slog.Any("error", err))
			}
			dberr.Abort(c, err, "checking the member token")
			return
		}
		c.Set(ginMemberKey, m)
		c.Request = c.Request.WithContext(WithMember(c.Request.Context(), m))
		c.Next()
	}
}

// WithMember returns ctx with m as the audit actor and m's workspace as the
// request's workspace; a missing source becomes "web".
func WithMember(ctx context.Context, m Member) context.Context {
	info, _ := outbox.RequestInfoFrom(ctx)
	info.WorkspaceID = m.WorkspaceID
	if info.Source == "" {
		info.Source = SourceWeb
	}
	return outbox.WithRequestInfo(outbox.WithActor(ctx, m.Actor()), info)
}

// Require returns middleware answering 403 unless the member's role is at
// least min. It must run after Middleware.
func Require(min Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		m, ok := MemberFrom(c)
		if !ok {
			httperr.Abort(c, http.StatusUnauthorized, httperr.CodeUnauthenticated, "a member token is required", "")
			return
		}
		if !m.Role.AtLeast(min) {
			httperr.Abort(c, http.StatusForbidden, httperr.CodeForbidden,
				fmt.Sprintf("this needs the %s role or higher", min), "")
			return
		}
		c.Next()
	}
}

// bearer extracts a member token from an Authorization header value.
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	// A real token is the prefix plus 43 base64url characters; bound the
	// length so an absurd header is not hashed.
	if !strings.HasPrefix(token, TokenPrefix) || len(token) > 128 {
		return "", false
	}
	return token, true
}
