package events

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/cursorkey"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/paging"
	"github.com/auditlog/auditlog/outbox"
)

// Query parameters of the routes besides the filters.
const (
	paramLimit     = "limit"
	paramCursor    = "cursor"
	paramFormat    = "format"
	paramWorkspace = "workspace_id"
)

// Page sizes of GET /v1/events.
const (
	LimitDefault = paging.LimitDefault
	LimitMax     = paging.LimitMax
)

// Config configures the handlers.
type Config struct {
	// CSVFormulaGuard prefixes export cells that a spreadsheet would run as
	// a formula with '. The application passes export.csv_formula_guard,
	// whose default is true; the zero value here means off.
	CSVFormulaGuard bool
	// Recorder records the audit_log.export event of each export. Default
	// outbox.Default().
	Recorder *outbox.Recorder
	// Logger receives handler errors. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the auditlog_export_rows_total counter. Nil
	// leaves the counter unregistered (still counted, never exposed).
	Registerer prometheus.Registerer
}

// Handlers serves GET /v1/events and GET /v1/events/export.
type Handlers struct {
	pool       *pgxpool.Pool
	cfg        Config
	log        *slog.Logger
	keys       *cursorkey.Store
	exportRows prometheus.Counter
	// exportBytes counts export body bytes sent.
	exportBytes prometheus.Counter
}

// New returns the handlers reading from pool.
func New(pool *pgxpool.Pool, cfg Config) (*Handlers, error) {
	if pool == nil {
		return nil, errors.New("events: pool is required")
	}
	if cfg.Recorder == nil {
		cfg.Recorder = outbox.Default()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// 'cursor_key' is the name this key has always had.
	keys, err := cursorkey.New(pool, "cursor_key")
	if err != nil {
		return nil, err
	}
	rows, err := registerCounter(cfg.Registerer, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_export_rows_total",
		Help: "Rows written by exports, CSV and ndjson (complete and interrupted).",
	}))
	if err != nil {
		return nil, err
	}
	bytes, err := registerCounter(cfg.Registerer, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_export_bytes_total",
		Help: "Bytes of export bodies sent, CSV and ndjson (complete and interrupted).",
	}))
	if err != nil {
		return nil, err
	}
	return &Handlers{
		pool:        pool,
		cfg:         cfg,
		log:         cfg.Logger,
		keys:        keys,
		exportRows:  rows,
		exportBytes: bytes,
	}, nil
}

// registerCounter registers c with reg (when set); a second Handlers on the
// same registry shares the counter registered first.
func registerCounter(reg prometheus.Registerer, c prometheus.Counter) (prometheus.Counter, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		return nil, fmt.Errorf("events: registering metrics: %w", err)
	}
	existing, ok := are.ExistingCollector.(prometheus.Counter)
	if !ok {
		return nil, fmt.Errorf("events: a metric is registered as another type: %w", err)
	}
	return existing, nil
}

// Register adds GET /events and GET /events/export to v1, which must run the
// authentication middleware; both need the events:read scope.
func (h *Handlers) Register(v1 *gin.RouterGroup) {
	v1.GET("/events", auth.Require(auth.ScopeRead), h.query)
	v1.GET("/events/export", auth.Require(auth.ScopeRead), h.export)
}

// request is what both routes read from the query string.
type request struct {
	key     auth.Key
	filters Filters
	// own holds the route's own non-filter parameters (limit, cursor,
	// format), each given at most once.
	own map[string]string
}

// parseRequest reads the key, and checks the workspace and the query string.
// ownParams are the route's parameters besides the filters. It answers the
// error and returns false when the request cannot proceed.
func parseRequest(c *gin.Context, ownParams ...string) (request, bool) {
	// auth.Require, in front of both routes (Register), guarantees the key.
	key, _ := auth.KeyFrom(c)
	// URL.Query would silently drop a malformed pair (e.g. one with a raw
	// ';'), widening the query; refuse it instead.
	q, err := url.ParseQuery(c.Request.URL.RawQuery)
	if err != nil {
		httperr.BadParam(c, "", "malformed query string: "+err.Error())
		return request{}, false
	}
	// The workspace always comes from the key; naming another one is a
	// 403 rather than silently answering for the key's own.
	for _, ws := range q[paramWorkspace] {
		if !auth.SameWorkspace(c, paramWorkspace, ws) {
			return request{}, false
		}
	}
	filterVals := url.Values{}
	own := map[string]string{}
	for k, vs := range q {
		switch {
		case k == paramWorkspace:
		case slices.Contains(ownParams, k):
			if len(vs) != 1 {
				httperr.BadParam(c, k, "must be given once")
				return request{}, false
			}
			own[k] = vs[0]
		default:
			filterVals[k] = vs
		}
	}
	f, err := ParseFilters(filterVals)
	if err != nil {
		var pe *ParamError
		if errors.As(err, &pe) {
			httperr.BadParam(c, pe.Param, pe.Message)
		} else {
			httperr.BadParam(c, "", err.Error())
		}
		return request{}, false
	}
	return request{key: key, filters: f, own: own}, true
}
