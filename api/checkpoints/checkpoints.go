// Package checkpoints serves GET /v1/checkpoints: the signed checkpoints of
// the key's workspace, oldest first, a page at a time, which `auditlog
// verify --checkpoints` reads to check an ndjson export offline (README
// "Integrity").
//
// # Pages
//
// Pagination mirrors GET /v1/events: limit 1-1000 (default 100), an opaque
// cursor, and next_cursor in the response, null on the last page. A page is
// a range scan of the index (workspace_id, id), so a deep page costs what
// the first does.
//
// # Cursors
//
// next_cursor carries the id of the page's last checkpoint and an
// HMAC-SHA256 over it and the workspace, keyed by 32 random bytes kept in
// auditlog_settings as 'checkpoints_cursor_key' (created by the first
// instance that needs it). A cursor used under another workspace's key, or
// altered, is refused with 400 field "cursor"; the query is scoped to the
// key's workspace regardless. An empty cursor (cursor=) is the first page,
// as an absent one is. The page size may change between pages.
package checkpoints

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/cursorkey"
	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/paging"
	"github.com/auditlog/auditlog/outbox/integrity"
)

// Query parameters of GET /v1/checkpoints.
const (
	paramLimit     = "limit"
	paramCursor    = "cursor"
	paramWorkspace = "workspace_id"
)

// Page sizes of GET /v1/checkpoints: those of GET /v1/events, so a client
// pages both routes alike. A checkpoint is a few hundred bytes (a prune
// checkpoint more, with its bridges), so a full page stays well under a
// megabyte, and a year of hourly checkpoints is nine pages.
const (
	LimitDefault = paging.LimitDefault
	LimitMax     = paging.LimitMax
)

// Response is the body of GET /v1/checkpoints.
type Response struct {
	// PublicKey is the configured signing key's public half (standard
	// base64 of 32 bytes), null when checkpoints are unsigned. Verify with a
	// copy of the key obtained out of band, not with this one: whoever can
	// change the log could change this answer too.
	PublicKey *string `json:"public_key"`
	// KeyID is integrity.KeyID of PublicKey, null when unsigned.
	KeyID *string `json:"key_id"`
	// Data are one page of the workspace's checkpoints, oldest first.
	Data []integrity.Checkpoint `json:"data"`
	// NextCursor continues with the next page; null on the last page.
	NextCursor *string `json:"next_cursor"`
}

// Handler serves the route.
type Handler struct {
	pool   *pgxpool.Pool
	signer *integrity.Signer
	log    *slog.Logger
	keys   *cursorkey.Store
}

// New returns the handler; signer may be nil (no signing key configured).
func New(pool *pgxpool.Pool, signer *integrity.Signer, log *slog.Logger) (*Handler, error) {
	if pool == nil {
		return nil, errors.New("checkpoints: pool is nil")
	}
	if log == nil {
		return nil, errors.New("checkpoints: logger is nil")
	}
	keys, err := cursorkey.New(pool, "checkpoints_cursor_key")
	if err != nil {
		return nil, err
	}
	return &Handler{pool: pool, signer: signer, log: log, keys: keys}, nil
}

// Register adds GET /v1/checkpoints (scope events:read) to v1.
func (h *Handler) Register(v1 *gin.RouterGroup) {
	v1.GET("/checkpoints", auth.Require(auth.ScopeRead), h.list)
}

func (h *Handler) list(c *gin.Context) {
	// auth.Require, in front of the route (Register), guarantees the key.
	key, _ := auth.KeyFrom(c)
	ws := key.WorkspaceID
	params, ok := parseQuery(c)
	if !ok {
		return
	}
	lim, hasLim := params[paramLimit]
	limit, err := paging.ParseLimit(lim, hasLim)
	if err != nil {
		httperr.BadParam(c, paramLimit, err.Error())
		return
	}
	ctx := c.Request.Context()
	macKey, err := h.keys.Get(ctx)
	if err != nil {
		h.log.Error("checkpoints: loading cursor key failed", "error", err)
		dberr.Abort(c, err, "loading the cursor key")
		return
	}
	var after int64
	// An absent or empty cursor (cursor=) asks for the first page.
	if cur := params[paramCursor]; cur != "" {
		if after, err = decodeCursor(macKey, cur, ws); err != nil {
			httperr.BadParam(c, paramCursor, "is not a next_cursor of GET /v1/checkpoints for this workspace: pass next_cursor unchanged")
			return
		}
	}
	cps, more, err := integrity.ListPage(ctx, h.pool, ws, after, limit)
	if err != nil {
		h.log.Error("checkpoints: listing failed", "workspace_id", ws, "error", err)
		dberr.Abort(c, err, "listing checkpoints")
		return
	}
	resp := Response{Data: cps}
	if more {
		s := encodeCursor(macKey, cps[len(cps)-1].ID, ws)
		resp.NextCursor = &s
	}
	if h.signer != nil {
		pub, id := integrity.EncodePublicKey(h.signer.PublicKey()), h.signer.KeyID()
		resp.PublicKey, resp.KeyID = &pub, &id
	}
	c.JSON(http.StatusOK, resp)
}

// parseQuery checks the query string: limit and cursor at most once each,
// workspace_id only naming the key's own workspace (403 otherwise, as on
// GET /v1/events), nothing else. It answers the error and returns false
// when the request cannot proceed.
func parseQuery(c *gin.Context) (map[string]string, bool) {
	// URL.Query would silently drop a malformed pair; refuse it instead.
	q, err := url.ParseQuery(c.Request.URL.RawQuery)
	if err != nil {
		httperr.BadParam(c, "", "malformed query string: "+err.Error())
		return nil, false
	}
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	slices.Sort(names) // report the same bad parameter every time
	params := map[string]string{}
	for _, k := range names {
		vs := q[k]
		switch k {
		case paramWorkspace:
			for _, v := range vs {
				if !auth.SameWorkspace(c, paramWorkspace, v) {
					return nil, false
				}
			}
		case paramLimit, paramCursor:
			if len(vs) != 1 {
				httperr.BadParam(c, k, "must be given once")
				return nil, false
			}
			params[k] = vs[0]
		default:
			httperr.BadParam(c, k, "unknown query parameter "+httperr.Quote(k))
			return nil, false
		}
	}
	return params, true
}
