// Package health serves liveness (/healthz) and readiness (/readyz).
package health

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/migrations"
)

// CheckTimeoutDefault bounds one readiness check of the database.
const CheckTimeoutDefault = 2 * time.Second

// Checker answers the health endpoints.
type Checker struct {
	pool    *pgxpool.Pool
	logger  *slog.Logger
	timeout time.Duration
	// migrated latches once no migration is pending: migrations never
	// become pending at run time, so only reachability is checked after.
	migrated atomic.Bool
}

// New returns a Checker of pool. timeout bounds each readiness check;
// zero means CheckTimeoutDefault.
func New(pool *pgxpool.Pool, logger *slog.Logger, timeout time.Duration) (*Checker, error) {
	if pool == nil {
		return nil, errors.New("health: pool is required")
	}
	if logger == nil {
		return nil, errors.New("health: logger is required")
	}
	if timeout == 0 {
		timeout = CheckTimeoutDefault
	}
	if timeout < 0 {
		return nil, errors.New("health: timeout must be positive")
	}
	return &Checker{pool: pool, logger: logger, timeout: timeout}, nil
}

// Register adds GET /healthz and GET /readyz to r.
func (h *Checker) Register(r gin.IRouter) {
	r.GET("/healthz", h.healthz)
	r.GET("/readyz", h.readyz)
}

type status struct {
	Status string `json:"status"`
}

// healthz answers 200 whenever the process serves HTTP.
func (h *Checker) healthz(c *gin.Context) { c.JSON(http.StatusOK, status{Status: "ok"}) }

// readyz answers 200 when the database answers and every migration is
// applied, else 503 with the reason.
func (h *Checker) readyz(c *gin.Context) {
	if reason := h.Ready(c.Request.Context()); reason != "" {
		httperr.Abort(c, http.StatusServiceUnavailable, httperr.CodeUnavailable, reason, "")
		return
	}
	c.JSON(http.StatusOK, status{Status: "ready"})
}

// Ready checks readiness and returns why the server is not ready, or "".
func (h *Checker) Ready(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if err := h.pool.Ping(ctx); err != nil {
		h.logger.Warn("health: database ping failed", "error", err)
		return "the database is unreachable"
	}
	if h.migrated.Load() {
		return ""
	}
	pending, err := h.pending(ctx)
	if err != nil {
		h.logger.Warn("health: checking migrations failed", "error", err)
		return "the migration state could not be read"
	}
	if pending {
		return "database migrations are pending"
	}
	h.migrated.Store(true)
	return ""
}

// pending asks goose through a database/sql view of the pool, opened only
// for the check so no idle goroutine outlives it.
func (h *Checker) pending(ctx context.Context) (bool, error) {
	db := stdlib.OpenDBFromPool(h.pool)
	defer db.Close()
	return migrations.Pending(ctx, db)
}
