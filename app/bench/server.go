package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditlog/auditlog/api"
	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/outbox"
)

// server is the API server running in this process on a loopback port, as
// `auditlog serve` builds it (api.New with the events handlers mounted on
// /v1), with an HTTP client sized for the stage's concurrency.
type server struct {
	ts     *httptest.Server
	client *http.Client

	mu   sync.Mutex
	keys map[string]string // workspace → secret (read and write)
}

// newServer starts the API on pool.
func newServer(pool *pgxpool.Pool, rec *outbox.Recorder, log *slog.Logger, conns int) (*server, error) {
	reg := prometheus.NewRegistry()
	eh, err := events.New(pool, events.Config{CSVFormulaGuard: true, Recorder: rec, Logger: log, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("building the events handlers: %w", err)
	}
	srv, err := api.New(api.Config{Addr: "127.0.0.1:0"}, api.Deps{
		Pool:     pool,
		Recorder: rec,
		Logger:   log,
		Registry: reg,
		V1:       []func(*gin.RouterGroup){eh.Register},
	})
	if err != nil {
		return nil, fmt.Errorf("building the API server: %w", err)
	}
	ts := httptest.NewServer(srv.Handler())
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	return &server{
		ts:     ts,
		client: &http.Client{Transport: tr},
		keys:   map[string]string{},
	}, nil
}

func (s *server) close() {
	s.client.CloseIdleConnections()
	s.ts.Close()
}

// key returns a read/write key of workspace ws, creating it once.
func (s *server) key(ctx context.Context, pool *pgxpool.Pool, ws string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[ws]; ok {
		return k, nil
	}
	_, secret, err := auth.Create(ctx, pool, ws, "bench", []string{auth.ScopeRead, auth.ScopeWrite})
	if err != nil {
		return "", fmt.Errorf("creating an API key for %s: %w", ws, err)
	}
	s.keys[ws] = secret
	return secret, nil
}

// get sends GET path (with query) as ws's key and returns the response,
// whose body the caller must close. A status other than 200 is an error.
func (s *server) get(ctx context.Context, pool *pgxpool.Pool, ws, pathQuery string) (*http.Response, error) {
	key, err := s.key(ctx, pool, ws)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.ts.URL+pathQuery, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", pathQuery, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s: %s", pathQuery, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp, nil
}

// server returns the bench's API server, starting it on first use.
func (b *bench) server() (*server, error) {
	if b.srv == nil {
		s, err := newServer(b.pool, b.rec, b.log, 2*b.cfg.clients+4)
		if err != nil {
			return nil, err
		}
		b.srv = s
	}
	return b.srv, nil
}

// planCollector gathers the plans auto_explain sends as notices.
type planCollector struct {
	mu    sync.Mutex
	plans []string
}

func (p *planCollector) onNotice(_ *pgconn.PgConn, n *pgconn.Notice) {
	if !strings.Contains(n.Message, "plan:") {
		return
	}
	p.mu.Lock()
	p.plans = append(p.plans, n.Message)
	p.mu.Unlock()
}

// take returns and forgets the plans collected so far.
func (p *planCollector) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.plans
	p.plans = nil
	return out
}

// explainServer is a second API server whose database sessions run
// auto_explain with ANALYZE and BUFFERS, so the plans of the handler's own
// queries (not copies of its SQL) can be inspected. It is only used for the
// EXPLAIN pass, never for timings.
type explainServer struct {
	*server
	pool  *pgxpool.Pool
	plans *planCollector
}

func (b *bench) newExplainServer(ctx context.Context) (*explainServer, error) {
	plans := &planCollector{}
	cfg := b.poolCfg.Copy()
	cfg.MaxConns = 4
	cfg.ConnConfig.OnNotice = plans.onNotice
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, loadAutoExplainSQL); err != nil {
			return fmt.Errorf("loading auto_explain (needs superuser): %w", err)
		}
		_, err := c.Exec(ctx, autoExplainSQL)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting the EXPLAIN pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting the EXPLAIN pool: %w", err)
	}
	s, err := newServer(pool, b.rec, b.log, 4)
	if err != nil {
		pool.Close()
		return nil, err
	}
	// Same keys as the main server: they are rows of the same database.
	main, err := b.server()
	if err != nil {
		s.close()
		pool.Close()
		return nil, err
	}
	main.mu.Lock()
	for ws, k := range main.keys {
		s.keys[ws] = k
	}
	main.mu.Unlock()
	return &explainServer{server: s, pool: pool, plans: plans}, nil
}

func (e *explainServer) close() {
	e.server.close()
	e.pool.Close()
}
