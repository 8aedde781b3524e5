package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/internal/apitest"
	"github.com/auditlog/auditlog/internal/syncbuf"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// logLines returns the JSON log records written to logs so far.
func logLines(t *testing.T, logs *syncbuf.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		out = append(out, m)
	}
	return out
}

type countingWaker struct{ n atomic.Int64 }

func (w *countingWaker) Wake() { w.n.Add(1) }

type bundle struct {
	pool     *pgxpool.Pool
	srv      *Server
	logs     *syncbuf.Buffer
	waker    *countingWaker
	registry *prometheus.Registry
}

// echo answers what the request context says about the request.
func echo(c *gin.Context) {
	info, _ := outbox.RequestInfoFrom(c.Request.Context())
	c.JSON(http.StatusOK, gin.H{"info": info, "gin_client_ip": c.ClientIP()})
}

func newBundle(t *testing.T, pool *pgxpool.Pool, cfg Config) *bundle {
	t.Helper()
	b := &bundle{pool: pool, logs: &syncbuf.Buffer{}, waker: &countingWaker{}, registry: prometheus.NewRegistry()}
	logger := slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	b.srv, err = New(cfg, Deps{
		Pool: pool, Recorder: rec, Logger: logger, Registry: b.registry, Waker: b.waker,
		V1: []func(*gin.RouterGroup){func(v1 *gin.RouterGroup) {
			v1.GET("/events", auth.Require(auth.ScopeRead), echo)
		}},
		Mount: []func(gin.IRouter){func(r gin.IRouter) {
			r.GET("/app/echo", echo)
			r.GET("/app/panic", func(c *gin.Context) { panic("secret detail in panic") })
			r.GET("/app/panic-after-write", func(c *gin.Context) {
				c.String(http.StatusOK, "partial")
				panic("late")
			})
		}},
	})
	require.NoError(t, err)
	return b
}

func (b *bundle) do(t *testing.T, method, path, body string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = "203.0.113.9:5555"
	for k, v := range header {
		if k == "RemoteAddr" {
			req.RemoteAddr = v
			continue
		}
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	b.srv.Handler().ServeHTTP(w, req)
	return w
}

// errorBody checks w carries the contract's error shape, exactly the keys
// {"error": {"code", "message", "field"}} with field a string or null, and
// returns it.
func errorBody(t *testing.T, w *httptest.ResponseRecorder) httperr.Detail {
	t.Helper()
	require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"))
	var shape map[string]map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &shape), w.Body.String())
	require.Len(t, shape, 1, w.Body.String())
	d, ok := shape["error"]
	require.True(t, ok, w.Body.String())
	require.Len(t, d, 3, w.Body.String())
	require.IsType(t, "", d["code"], w.Body.String())
	require.IsType(t, "", d["message"], w.Body.String())
	field, ok := d["field"]
	require.True(t, ok, "field is always present: %s", w.Body.String())
	if field != nil {
		require.IsType(t, "", field, w.Body.String())
		require.NotEmpty(t, field, "no field is null, not \"\": %s", w.Body.String())
	}
	var eb httperr.Body
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &eb), w.Body.String())
	return eb.Error
}

func TestServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, testdb.New(t), Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	key, writeSecret, err := auth.Create(ctx, b.pool, "ws_acme", "svc", []string{auth.ScopeWrite})
	require.NoError(t, err)
	_, readSecret, err := auth.Create(ctx, b.pool, "ws_acme", "reader", []string{auth.ScopeRead})
	require.NoError(t, err)

	t.Run("health", func(t *testing.T) {
		w := b.do(t, "GET", "/healthz", "", nil)
		require.Equal(t, 200, w.Code)
		w = b.do(t, "GET", "/readyz", "", nil)
		require.Equal(t, 200, w.Code, w.Body.String())
	})
	t.Run("404 is JSON", func(t *testing.T) {
		w := b.do(t, "GET", "/nope", "", nil)
		require.Equal(t, 404, w.Code)
		require.Equal(t, httperr.CodeNotFound, errorBody(t, w).Code)
		w = b.do(t, "GET", "/healthz/", "", nil)
		require.Equal(t, 404, w.Code, "no redirect that would skip the middleware")
	})
	t.Run("405 is JSON with Allow", func(t *testing.T) {
		w := b.do(t, "DELETE", "/healthz", "", nil)
		require.Equal(t, 405, w.Code)
		require.Equal(t, "method_not_allowed", errorBody(t, w).Code)
		require.Equal(t, "GET", w.Header().Get("Allow"))
	})
	t.Run("panic is a JSON 500 without details", func(t *testing.T) {
		w := b.do(t, "GET", "/app/panic", "", map[string]string{"X-Request-ID": "req-panic", "RemoteAddr": "10.0.0.5:1000"})
		require.Equal(t, 500, w.Code)
		d := errorBody(t, w)
		require.Equal(t, httperr.Detail{Code: httperr.CodeInternal, Message: "internal error"}, d)
		require.NotContains(t, w.Body.String(), "secret detail")
		require.NotContains(t, w.Body.String(), "goroutine")
		var logged map[string]any
		for _, l := range logLines(t, b.logs) {
			if l["msg"] == "http: handler panicked" && l["request_id"] == "req-panic" {
				logged = l
			}
		}
		require.NotNil(t, logged, "the panic is logged with the request id")
		require.Equal(t, "secret detail in panic", logged["panic"])
		require.Equal(t, "/app/panic", logged["route"])
	})
	t.Run("panic after the response started", func(t *testing.T) {
		w := b.do(t, "GET", "/app/panic-after-write", "", nil)
		require.Equal(t, 200, w.Code)
		require.Equal(t, "partial", w.Body.String())
	})
	t.Run("client ip from trusted proxy, gin not spoofable", func(t *testing.T) {
		w := b.do(t, "GET", "/app/echo", "", map[string]string{
			"RemoteAddr":      "10.1.2.3:4000",
			"X-Forwarded-For": "6.6.6.6, 203.0.113.7",
			"X-Real-IP":       "7.7.7.7",
			"User-Agent":      "browser/1",
		})
		require.Equal(t, 200, w.Code)
		var got struct {
			Info        outbox.RequestInfo `json:"info"`
			GinClientIP string             `json:"gin_client_ip"`
		}
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &got))
		require.Equal(t, "203.0.113.7", got.Info.IP)
		require.Equal(t, "web", got.Info.Source)
		require.Equal(t, "browser/1", got.Info.UserAgent)
		require.Equal(t, w.Header().Get("X-Request-ID"), got.Info.RequestID)
		require.Equal(t, "10.1.2.3", got.GinClientIP, "gin's ClientIP believes no header")
	})
	t.Run("header from untrusted socket ignored", func(t *testing.T) {
		w := b.do(t, "GET", "/app/echo", "", map[string]string{"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "7.7.7.7"})
		require.Contains(t, w.Body.String(), `"ip":"203.0.113.9"`)
		require.Contains(t, w.Body.String(), `"gin_client_ip":"203.0.113.9"`)
	})
	t.Run("v1 hook: scope, workspace, source", func(t *testing.T) {
		w := b.do(t, "GET", "/v1/events", "", nil)
		require.Equal(t, 401, w.Code)
		require.Equal(t, "Bearer realm=\"auditlog\"", w.Header().Get("WWW-Authenticate"))
		w = b.do(t, "GET", "/v1/events", "", map[string]string{"Authorization": "Bearer " + writeSecret})
		require.Equal(t, 403, w.Code)
		w = b.do(t, "GET", "/v1/events?workspace_id=ws_other", "", map[string]string{"Authorization": "Bearer " + readSecret})
		require.Equal(t, 403, w.Code)
		require.Equal(t, "workspace_id", errorBody(t, w).Field)
		w = b.do(t, "GET", "/v1/events", "", map[string]string{"Authorization": "Bearer " + readSecret})
		require.Equal(t, 200, w.Code, w.Body.String())
		require.Contains(t, w.Body.String(), `"workspace_id":"ws_acme"`)
		require.Contains(t, w.Body.String(), `"source":"api"`)
	})
	t.Run("ingest", func(t *testing.T) {
		w := b.do(t, "POST", "/v1/events",
			`{"action":"member.invite","source":"web","actor":{"type":"user","id":"u_1"}}`,
			map[string]string{"Authorization": "Bearer " + writeSecret, "Content-Type": "application/json",
				"X-Request-ID": "req-ingest", "RemoteAddr": "10.0.0.5:1000"})
		require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
		require.EqualValues(t, 1, b.waker.n.Load())
		var n int
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&n))
		require.Equal(t, 1, n)

		var access map[string]any
		for _, l := range logLines(t, b.logs) {
			if l["msg"] == "http request" && l["request_id"] == "req-ingest" {
				access = l
			}
		}
		require.NotNil(t, access)
		require.Equal(t, "INFO", access["level"])
		require.Equal(t, "POST", access["method"])
		require.Equal(t, "/v1/events", access["route"])
		require.EqualValues(t, 202, access["status"])
		require.Equal(t, key.ID, access["key_id"])
		require.Equal(t, "ws_acme", access["workspace_id"])
		require.Contains(t, access, "duration_ms")
		// Never the key itself, nor the event body.
		for _, l := range logLines(t, b.logs) {
			raw, err := json.Marshal(l)
			require.NoError(t, err)
			require.NotContains(t, string(raw), writeSecret)
			require.NotContains(t, string(raw), "member.invite")
		}
	})
	t.Run("request id from an untrusted peer is replaced", func(t *testing.T) {
		w := b.do(t, "GET", "/app/echo", "", map[string]string{"X-Request-ID": "req-planted"})
		require.Equal(t, 200, w.Code)
		id := w.Header().Get("X-Request-ID")
		require.NotEqual(t, "req-planted", id)
		require.Contains(t, w.Body.String(), `"request_id":"`+id+`"`)
		w = b.do(t, "GET", "/app/echo", "", map[string]string{"X-Request-ID": "req-from-lb", "RemoteAddr": "10.0.0.5:1000"})
		require.Equal(t, "req-from-lb", w.Header().Get("X-Request-ID"))
		require.Contains(t, w.Body.String(), `"request_id":"req-from-lb"`)
	})
	t.Run("metrics", func(t *testing.T) {
		w := b.do(t, "GET", "/metrics", "", nil)
		require.Equal(t, 200, w.Code)
		text := w.Body.String()
		require.Contains(t, text, `auditlog_http_requests_total{method="GET",route="/healthz",status="200"} 1`)
		require.Contains(t, text, `auditlog_http_requests_total{method="GET",route="unmatched",status="404"} 2`)
		require.Contains(t, text, `auditlog_http_requests_total{method="DELETE",route="unmatched",status="405"} 1`)
		require.Contains(t, text, `auditlog_http_requests_total{method="POST",route="/v1/events",status="202"} 1`)
		require.Contains(t, text, `auditlog_http_requests_total{method="GET",route="/app/panic",status="500"} 1`)
		require.Contains(t, text, `auditlog_http_request_seconds_bucket{method="GET",route="/healthz",le="+Inf"} 1`)
		require.Contains(t, text, "go_goroutines")
		require.Contains(t, text, "process_")
		// The pool's own statistics: this test's requests used connections.
		require.Regexp(t, `(?m)^auditlog_db_pool_acquires_total [1-9]`, text)
		require.Regexp(t, `(?m)^auditlog_db_pool_max_conns [1-9]`, text)
		require.Contains(t, text, "auditlog_db_pool_idle_conns ")
		// The one GET /healthz answered {"status":"ok"}: 15 bytes.
		require.Contains(t, text, `auditlog_http_response_bytes_total{method="GET",route="/healthz"} 15`+"\n")
		w = b.do(t, "BREW", "/x", "", nil)
		require.Equal(t, 404, w.Code)
		w = b.do(t, "GET", "/metrics", "", nil)
		require.Contains(t, w.Body.String(), `method="OTHER"`)
		require.NotContains(t, w.Body.String(), "BREW")
	})
	// Every error the server writes has the contract's shape, "field"
	// included (null when no input is named), whichever layer answers. Last,
	// so the metrics counts above do not see these requests.
	t.Run("every error has the contract's shape", func(t *testing.T) {
		write := map[string]string{"Authorization": "Bearer " + writeSecret, "Content-Type": "application/json"}
		tooMany := `{"events":[` + strings.TrimSuffix(strings.Repeat(`{},`, 1001), ",") + `]}`
		for _, tc := range []struct {
			name, method, path, body string
			header                   map[string]string
			status                   int
			field                    string
		}{
			{"400 names its field", "POST", "/v1/events", `{"action":"Bad","source":"web","actor":{"type":"system"}}`, write, 400, "action"},
			{"401", "GET", "/v1/events", "", nil, 401, ""},
			{"403 scope", "GET", "/v1/events", "", write, 403, ""},
			{"403 workspace", "GET", "/v1/events?workspace_id=ws_other", "", map[string]string{"Authorization": "Bearer " + readSecret}, 403, "workspace_id"},
			{"404", "GET", "/nope", "", nil, 404, ""},
			{"405", "PUT", "/healthz", "", nil, 405, ""},
			{"413 batch", "POST", "/v1/events", tooMany, write, 413, "events"},
			{"413 body", "POST", "/v1/events", strings.Repeat(" ", 5<<20+1), write, 413, ""},
			{"415", "POST", "/v1/events", "x", map[string]string{"Authorization": "Bearer " + writeSecret, "Content-Type": "text/plain"}, 415, ""},
			{"500 from a panic", "GET", "/app/panic", "", nil, 500, ""},
		} {
			w := b.do(t, tc.method, tc.path, tc.body, tc.header)
			require.Equal(t, tc.status, w.Code, "%s: %s", tc.name, w.Body.String())
			require.Equal(t, tc.field, errorBody(t, w).Field, tc.name)
			if tc.field == "" {
				require.Contains(t, w.Body.String(), `"field":null`, tc.name)
			}
		}
	})
}

// TestServerDatabaseUnavailable: whether nothing listens or the server
// refuses the connection (the database is missing, e.g. dropped), API
// requests are 503 as /readyz is, never 500.
func TestServerDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	for name, pool := range map[string]*pgxpool.Pool{
		"nothing listens":  apitest.DeadPool(t),
		"missing database": apitest.MissingDatabasePool(t),
	} {
		t.Run(name, func(t *testing.T) {
			b := newBundle(t, pool, Config{})
			// Any well-formed key: the database cannot be asked about it.
			w := b.do(t, "POST", "/v1/events", `{"action":"a.b"}`, map[string]string{
				"Authorization": "Bearer alk_" + strings.Repeat("A", 43), "Content-Type": "application/json"})
			require.Equal(t, 503, w.Code, w.Body.String())
			require.Equal(t, httperr.CodeUnavailable, errorBody(t, w).Code)
			w = b.do(t, "GET", "/readyz", "", nil)
			require.Equal(t, 503, w.Code)
			require.Equal(t, httperr.CodeUnavailable, errorBody(t, w).Code)
			w = b.do(t, "GET", "/healthz", "", nil)
			require.Equal(t, 200, w.Code)
		})
	}
}

func TestStartShutdown(t *testing.T) {
	t.Parallel()
	b := newBundle(t, testdb.New(t), Config{Addr: "127.0.0.1:0"})
	require.NoError(t, b.srv.Start())
	require.Error(t, b.srv.Start(), "a second Start is refused")
	url := "http://" + b.srv.Addr() + "/healthz"
	resp, err := http.Get(url)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, 200, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("X-Request-ID"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, b.srv.Shutdown(ctx))
	_, err = http.Get(url)
	require.Error(t, err, "no longer serving")
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	deps := Deps{Pool: &pgxpool.Pool{}, Recorder: rec, Logger: slog.Default(), Registry: prometheus.NewRegistry()}
	for field, mutate := range map[string]func(*Deps){
		"Pool":     func(d *Deps) { d.Pool = nil },
		"Recorder": func(d *Deps) { d.Recorder = nil },
		"Logger":   func(d *Deps) { d.Logger = nil },
		"Registry": func(d *Deps) { d.Registry = nil },
	} {
		d := deps
		mutate(&d)
		_, err := New(Config{}, d)
		require.ErrorContains(t, err, field)
	}
	_, err = New(Config{MaxBatch: -1}, deps)
	require.ErrorContains(t, err, "MaxBatch")
	_, err = New(Config{ReadTimeout: -1}, deps)
	require.ErrorContains(t, err, "ReadTimeout")
	_, err = New(Config{TrustedProxies: []netip.Prefix{{}}}, deps)
	require.ErrorContains(t, err, "TrustedProxies")
	// The same registry can back a second server (e.g. tests, restarts).
	_, err = New(Config{}, deps)
	require.NoError(t, err)
	_, err = New(Config{}, deps)
	require.NoError(t, err)
}

// TestSlowBodyIsCutOff: a client trickling its body (slowloris) is cut off
// at ReadTimeout; nothing is stored and the server keeps serving.
func TestSlowBodyIsCutOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, testdb.New(t), Config{Addr: "127.0.0.1:0", ReadTimeout: time.Second})
	require.NoError(t, b.srv.Start())
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.srv.Shutdown(sctx)
	})
	_, secret, err := auth.Create(ctx, b.pool, "ws_acme", "svc", []string{auth.ScopeWrite})
	require.NoError(t, err)

	body := `{"action":"ticket.update","actor":{"type":"system"},"source":"api"}`
	conn, err := net.Dial("tcp", b.srv.Addr())
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", secret, len(body))
	require.NoError(t, err)
	start := time.Now()
	var werr error
	for i := 0; i < len(body) && werr == nil && time.Since(start) < 10*time.Second; i++ {
		_, werr = conn.Write([]byte{body[i]})
		time.Sleep(200 * time.Millisecond) // 13 s for the whole body
	}
	// The server answered (an error) or closed the connection long before
	// the body was complete.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	reply, _ := io.ReadAll(conn)
	require.Less(t, time.Since(start), 12*time.Second, "the trickle was not cut off")
	require.NotContains(t, string(reply), "202 Accepted")

	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&n))
	require.Zero(t, n, "nothing stored")
	resp, err := http.Get("http://" + b.srv.Addr() + "/healthz")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode, "the server still serves")
}

// TestShutdownWaitsForCutHandlers: a request still running at the end of
// the grace period has its connection cut, and Shutdown returns only once
// its handler has returned (so an export can record itself before the
// caller closes the database).
func TestShutdownWaitsForCutHandlers(t *testing.T) {
	t.Parallel()
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	started := make(chan struct{})
	var finished atomic.Bool
	srv, err := New(Config{Addr: "127.0.0.1:0"}, Deps{
		Pool: testdb.New(t), Recorder: rec, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
		Mount: []func(gin.IRouter){func(r gin.IRouter) {
			r.GET("/app/slow", func(c *gin.Context) {
				c.String(http.StatusOK, "begun")
				c.Writer.Flush()
				close(started)
				<-c.Request.Context().Done() // the cut
				time.Sleep(300 * time.Millisecond)
				finished.Store(true)
			})
		}},
	})
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	resp, err := http.Get("http://" + srv.Addr() + "/app/slow")
	require.NoError(t, err)
	defer resp.Body.Close()
	<-started

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.Error(t, srv.Shutdown(ctx), "the grace period ended with the request running")
	require.True(t, finished.Load(), "Shutdown returned before the cut handler did")
}
