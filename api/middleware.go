package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/clientip"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/metrics"
	"github.com/auditlog/auditlog/outbox"
)

// quietRoutes are polled by probes and scrapers; logging each at info would
// drown the log, so they are logged at debug.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// accessLog logs one line per request once it is served: method, route
// pattern (never the raw path, which may carry ids), status, duration,
// request id, and when known the workspace, the API key's id (never the
// key itself) and the client IP. Neither the query string nor any body is
// logged.
func accessLog(logger *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		route := c.FullPath()
		if route == "" {
			route = metrics.UnmatchedRoute
		}
		status := c.Writer.Status()
		level := slog.LevelInfo
		if quietRoutes[route] && status < 500 {
			level = slog.LevelDebug
		}
		if !logger.Enabled(c.Request.Context(), level) {
			return
		}
		attrs := []slog.Attr{
			slog.String("method", metrics.Method(c.Request.Method)),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.String("request_id", clientip.RequestID(c)),
		}
		info, _ := outbox.RequestInfoFrom(c.Request.Context())
		if info.WorkspaceID != "" {
			attrs = append(attrs, slog.String("workspace_id", info.WorkspaceID))
		}
		if key, ok := auth.KeyFrom(c); ok {
			attrs = append(attrs, slog.String("key_id", key.ID))
		}
		if info.IP != "" {
			attrs = append(attrs, slog.String("client_ip", info.IP))
		}
		if len(c.Errors) > 0 {
			attrs = append(attrs, slog.String("error", c.Errors.String()))
		}
		logger.LogAttrs(c.Request.Context(), level, "http request", attrs...)
	}
}

// recovery turns a handler panic into a logged error and a JSON 500 that
// reveals nothing of the cause.
func recovery(logger *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			// net/http's way of aborting a response on purpose.
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			logger.Error("http: handler panicked",
				"panic", fmt.Sprint(rec),
				"route", c.FullPath(),
				"request_id", clientip.RequestID(c),
				"stack", string(debug.Stack()),
			)
			if c.Writer.Written() {
				// Too late for a JSON body; end the response as it is.
				c.Abort()
				return
			}
			httperr.Abort(c, http.StatusInternalServerError, httperr.CodeInternal, "internal error", "")
		}()
		c.Next()
	}
}
