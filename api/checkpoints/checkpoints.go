// Package checkpoints serves GET /v1/checkpoints: the signed checkpoints of
// the key's workspace, which `auditlog verify --checkpoints` reads to check
// an ndjson export offline (README "Integrity").
package checkpoints

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/dberr"
	"github.com/auditlog/auditlog/outbox/integrity"
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
	// Data are the workspace's checkpoints, oldest first.
	Data []integrity.Checkpoint `json:"data"`
}

// Handler serves the route.
type Handler struct {
	pool   *pgxpool.Pool
	signer *integrity.Signer
	log    *slog.Logger
}

// New returns the handler; signer may be nil (no signing key configured).
func New(pool *pgxpool.Pool, signer *integrity.Signer, log *slog.Logger) (*Handler, error) {
	if pool == nil {
		return nil, errors.New("checkpoints: pool is nil")
	}
	if log == nil {
		return nil, errors.New("checkpoints: logger is nil")
	}
	return &Handler{pool: pool, signer: signer, log: log}, nil
}

// Register adds GET /v1/checkpoints (scope events:read) to v1.
func (h *Handler) Register(v1 *gin.RouterGroup) {
	v1.GET("/checkpoints", auth.Require(auth.ScopeRead), h.list)
}

func (h *Handler) list(c *gin.Context) {
	key, _ := auth.KeyFrom(c)
	cps, err := integrity.List(c.Request.Context(), h.pool, key.WorkspaceID)
	if err != nil {
		h.log.Error("checkpoints: listing failed", "workspace_id", key.WorkspaceID, "error", err)
		dberr.Abort(c, err, "listing checkpoints")
		return
	}
	resp := Response{Data: cps}
	if resp.Data == nil {
		resp.Data = []integrity.Checkpoint{}
	}
	if h.signer != nil {
		pub, id := integrity.EncodePublicKey(h.signer.PublicKey()), h.signer.KeyID()
		resp.PublicKey, resp.KeyID = &pub, &id
	}
	c.JSON(http.StatusOK, resp)
}
