// Package api is the HTTP server: gin wired with request context, access
// log, metrics, panic recovery, JSON 404/405, health, metrics and the
// authenticated /v1 API (ingest here; query and export, and the in-app
// modules' routes, mounted by the application through Deps).
//
// # Timeouts
//
// The http.Server bounds reading a request (ReadHeaderTimeout 10s,
// ReadTimeout 60s, so slow bodies are cut off) and idle keep-alive
// connections (IdleTimeout 120s). It sets no WriteTimeout, because CSV
// exports stream for as long as they take; routes that should finish
// quickly bound their own work with a context deadline instead (ingest:
// Config.IngestTimeout; health checks: 2s).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/clientip"
	"github.com/auditlog/auditlog/api/health"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/ingest"
	"github.com/auditlog/auditlog/api/metrics"
	"github.com/auditlog/auditlog/outbox"
)

// Defaults of Config.
const (
	AddrDefault              = ":8080"
	ReadHeaderTimeoutDefault = 10 * time.Second
	ReadTimeoutDefault       = 60 * time.Second
	IdleTimeoutDefault       = 120 * time.Second
)

// Sources put in the request context of events recorded while serving.
const (
	// SourceWeb is the source of routes mounted outside /v1 (the in-app
	// modules' routes, used from the web UI). A module serving another
	// channel (Slack, workflows) sets its own.
	SourceWeb = "web"
	// SourceAPI is the source of /v1 requests (e.g. an export's own event).
	SourceAPI = "api"
)

// codeMethodNotAllowed is the error code of a 405.
const codeMethodNotAllowed = "method_not_allowed"

// Config configures the server. Zero values take the defaults.
type Config struct {
	// Addr is the listen address (http.addr). Default ":8080".
	Addr string
	// TrustedProxies are the CIDRs whose X-Forwarded-For is believed
	// (http.trusted_proxies). Default none: the socket address is the client.
	TrustedProxies []netip.Prefix
	// MaxBatch is the most events one ingest request may carry
	// (ingest.max_batch). Default 1000.
	MaxBatch int
	// MaxBodyBytes is the largest ingest body (ingest.max_body_bytes).
	// Default 5 MiB.
	MaxBodyBytes int64
	// IngestTimeout bounds the database work of one ingest request.
	// Default 30s.
	IngestTimeout time.Duration
	// AuthCacheTTL is how long a verified API key is trusted without asking
	// the database, hence how long a revoked key may keep working.
	// Default 30s; negative disables the cache.
	AuthCacheTTL time.Duration
	// ReadHeaderTimeout, ReadTimeout and IdleTimeout configure the
	// http.Server. Defaults 10s, 60s, 120s.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
}

// Deps are the server's collaborators. Pool, Recorder, Logger and Registry
// are required.
type Deps struct {
	Pool     *pgxpool.Pool
	Recorder *outbox.Recorder
	Logger   *slog.Logger
	// Registry receives the HTTP, connection pool and Go/process metrics
	// and is served at /metrics; other components register on it too.
	Registry *prometheus.Registry
	// Waker, optional, is woken after each ingest commit (the relay).
	Waker ingest.Waker
	// V1 add routes to the authenticated /v1 group (query and export). Each
	// route applies its scope itself, e.g. auth.Require(auth.ScopeRead); the
	// key is in auth.KeyFrom, and a workspace_id query parameter other than
	// the key's has already been refused.
	V1 []func(v1 *gin.RouterGroup)
	// Mount add route groups outside /v1 (the in-app modules), which do
	// their own authentication.
	Mount []func(r gin.IRouter)
}

// Server is the HTTP server.
type Server struct {
	cfg    Config
	logger *slog.Logger
	engine *gin.Engine
	srv    *http.Server

	mu       sync.Mutex
	listener net.Listener
	served   chan error // Serve's result, once started

	// inflight counts handlers running, so Shutdown can wait for the ones
	// whose connections it had to cut (an export then records itself).
	inflight sync.WaitGroup

	// authn listens for key revocations from Start to Shutdown.
	authn      *auth.Authenticator
	stopListen context.CancelFunc
	listenDone chan struct{}
}

// New builds the server and its routes. It does not listen; see Start.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if deps.Pool == nil {
		return nil, errors.New("api: Deps.Pool is required")
	}
	if deps.Recorder == nil {
		return nil, errors.New("api: Deps.Recorder is required")
	}
	if deps.Logger == nil {
		return nil, errors.New("api: Deps.Logger is required")
	}
	if deps.Registry == nil {
		return nil, errors.New("api: Deps.Registry is required")
	}

	resolver, err := clientip.NewResolver(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("api: TrustedProxies: %w", err)
	}
	httpMetrics, err := metrics.NewHTTP(deps.Registry)
	if err != nil {
		return nil, fmt.Errorf("api: registering HTTP metrics: %w", err)
	}
	if err := metrics.RegisterRuntime(deps.Registry); err != nil {
		return nil, fmt.Errorf("api: registering runtime metrics: %w", err)
	}
	if err := metrics.RegisterPool(deps.Registry, deps.Pool); err != nil {
		return nil, fmt.Errorf("api: registering connection pool metrics: %w", err)
	}
	authn, err := auth.NewAuthenticator(deps.Pool, deps.Logger, auth.Options{CacheTTL: cfg.AuthCacheTTL})
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	ing, err := ingest.New(ingest.Config{
		MaxBatch:     cfg.MaxBatch,
		MaxBodyBytes: cfg.MaxBodyBytes,
		Timeout:      cfg.IngestTimeout,
	}, ingest.Deps{Pool: deps.Pool, Recorder: deps.Recorder, Logger: deps.Logger, Waker: deps.Waker})
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	checker, err := health.New(deps.Pool, deps.Logger, 0)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}

	engine, err := newEngine()
	if err != nil {
		return nil, err
	}
	engine.Use(
		clientip.RequestContext(resolver, SourceWeb),
		accessLog(deps.Logger),
		httpMetrics.Middleware(),
		recovery(deps.Logger),
	)
	engine.NoRoute(func(c *gin.Context) {
		httperr.Abort(c, http.StatusNotFound, httperr.CodeNotFound, "no such route", "")
	})
	engine.NoMethod(func(c *gin.Context) {
		httperr.Abort(c, http.StatusMethodNotAllowed, codeMethodNotAllowed, "method not allowed on this route", "")
	})

	checker.Register(engine)
	engine.GET("/metrics", gin.WrapH(metrics.Handler(deps.Registry)))

	v1 := engine.Group("/v1", setSource(SourceAPI), authn.Handler())
	ing.Register(v1)
	for _, f := range deps.V1 {
		f(v1)
	}
	for _, f := range deps.Mount {
		f(engine)
	}

	s := &Server{cfg: cfg, logger: deps.Logger, engine: engine, authn: authn}
	s.srv = &http.Server{
		Addr:              cfg.Addr,
		Handler:           s.track(engine),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// WriteTimeout stays 0: exports stream for as long as they take.
		ErrorLog: slog.NewLogLogger(deps.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

func (c *Config) withDefaults() error {
	if c.Addr == "" {
		c.Addr = AddrDefault
	}
	for _, t := range []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"ReadHeaderTimeout", &c.ReadHeaderTimeout, ReadHeaderTimeoutDefault},
		{"ReadTimeout", &c.ReadTimeout, ReadTimeoutDefault},
		{"IdleTimeout", &c.IdleTimeout, IdleTimeoutDefault},
	} {
		if *t.d == 0 {
			*t.d = t.def
		}
		if *t.d < 0 {
			return fmt.Errorf("api: %s must be positive, got %s", t.name, *t.d)
		}
	}
	return nil
}

// newEngine returns a bare gin engine that cannot be talked into a client
// IP by headers (clientip does that) and answers in JSON.
func newEngine() (*gin.Engine, error) {
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	// gin would otherwise trust every proxy and fall back to X-Real-IP;
	// nothing may use c.ClientIP() meaningfully, but make it the socket.
	engine.ForwardedByClientIP = false
	engine.RemoteIPHeaders = nil
	engine.TrustedPlatform = ""
	if err := engine.SetTrustedProxies(nil); err != nil {
		return nil, fmt.Errorf("api: configuring gin proxies: %w", err)
	}
	engine.HandleMethodNotAllowed = true
	// A redirect would skip every middleware and answer in HTML.
	engine.RedirectTrailingSlash = false
	engine.RedirectFixedPath = false
	// Handlers may pass c as a context.Context and still see the request
	// context's values (the audit context) and deadline.
	engine.ContextWithFallback = true
	return engine, nil
}

// Handler returns the server's HTTP handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.engine }

// Start listens on Config.Addr and serves in the background. It returns
// once the socket is bound, or the error binding it.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return errors.New("api: server already started")
	}
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("api: listening on %s: %w", s.cfg.Addr, err)
	}
	s.listener = l
	s.served = make(chan error, 1)
	// Revoked keys leave the auth cache as soon as they are revoked.
	lctx, stop := context.WithCancel(context.Background())
	s.stopListen, s.listenDone = stop, make(chan struct{})
	go func() {
		defer close(s.listenDone)
		s.authn.Listen(lctx)
	}()
	s.logger.Info("api: listening", "addr", l.Addr().String())
	go func() {
		err := s.srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			s.logger.Error("api: serving failed", "error", err)
		}
		s.served <- err
	}()
	return nil
}

// Addr returns the bound address once started (useful with port 0), else
// Config.Addr.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return s.listener.Addr().String()
	}
	return s.cfg.Addr
}

// cutHandlerWait bounds how long Shutdown waits, after cutting the
// connections still open at its deadline, for their handlers to return (an
// export records its audit_log.export event as it ends).
const cutHandlerWait = 5 * time.Second

// track counts the handlers running through h.
func (s *Server) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Done()
		h.ServeHTTP(w, r)
	})
}

// Shutdown stops accepting connections and waits for active requests
// (streaming exports included) until ctx ends; then it closes the
// connections still open and waits up to 5s more for their handlers to
// return, so they finish their own bookkeeping before the caller closes the
// database. It returns Serve's error, if it failed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	served := s.served
	stopListen, listenDone := s.stopListen, s.listenDone
	s.mu.Unlock()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		// Streams still running when ctx ended: cut them.
		_ = s.srv.Close()
		err = fmt.Errorf("api: shutting down: %w", err)
	}
	handlersDone := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(handlersDone)
	}()
	select {
	case <-handlersDone:
	case <-time.After(cutHandlerWait):
		s.logger.Warn("api: handlers still running after their connections were cut", "waited", cutHandlerWait.String())
	}
	if served != nil {
		if serveErr := <-served; serveErr != nil && err == nil {
			err = fmt.Errorf("api: serving: %w", serveErr)
		}
	}
	if stopListen != nil {
		stopListen()
		<-listenDone
	}
	return err
}

// setSource sets the audit source of the request context.
func setSource(source string) gin.HandlerFunc {
	return func(c *gin.Context) {
		info, _ := outbox.RequestInfoFrom(c.Request.Context())
		info.Source = source
		c.Request = c.Request.WithContext(outbox.WithRequestInfo(c.Request.Context(), info))
		c.Next()
	}
}
