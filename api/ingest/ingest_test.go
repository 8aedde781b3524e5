package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/clientip"
	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/api/internal/apitest"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// countingWaker counts Wake calls.
type countingWaker struct{ n atomic.Int64 }

func (w *countingWaker) Wake() { w.n.Add(1) }

type bundle struct {
	pool        *pgxpool.Pool
	engine      *gin.Engine
	waker       *countingWaker
	writeSecret string
	readSecret  string
	otherSecret string // events:write in ws_other
}

func newEngine(t testing.TB, pool *pgxpool.Pool, cfg Config, waker Waker) *gin.Engine {
	t.Helper()
	gin.SetMode(gin.ReleaseMode)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	h, err := New(cfg, Deps{Pool: pool, Recorder: rec, Logger: logger, Waker: waker})
	require.NoError(t, err)
	resolver, err := clientip.NewResolver(nil)
	require.NoError(t, err)
	engine := gin.New()
	engine.Use(clientip.RequestContext(resolver, "api"))
	authn, err := auth.NewAuthenticator(pool, logger, auth.Options{})
	require.NoError(t, err)
	h.Register(engine.Group("/v1", authn.Handler()))
	return engine
}

func setup(t testing.TB, cfg Config) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{pool: testdb.New(t), waker: &countingWaker{}}
	b.engine = newEngine(t, b.pool, cfg, b.waker)
	var err error
	_, b.writeSecret, err = auth.Create(ctx, b.pool, "ws_acme", "writer", []string{auth.ScopeWrite})
	require.NoError(t, err)
	_, b.readSecret, err = auth.Create(ctx, b.pool, "ws_acme", "reader", []string{auth.ScopeRead})
	require.NoError(t, err)
	_, b.otherSecret, err = auth.Create(ctx, b.pool, "ws_other", "other", []string{auth.ScopeWrite})
	require.NoError(t, err)
	return b
}

type response struct {
	code     int
	accepted accepted
	err      httperr.Detail
	raw      string
}

func (b *bundle) post(t testing.TB, secret, contentType, body string) response {
	t.Helper()
	return b.postReq(t, secret, contentType, strings.NewReader(body), int64(len(body)))
}

func (b *bundle) postReq(t testing.TB, secret, contentType string, body io.Reader, length int64) response {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/v1/events", body)
	req.ContentLength = length
	req.RemoteAddr = "198.51.100.200:4444"
	req.Header.Set("User-Agent", "calling-service/1.0")
	req.Header.Set("X-Request-ID", "svc-req-1")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	w := httptest.NewRecorder()
	b.engine.ServeHTTP(w, req)
	r := response{code: w.Code, raw: w.Body.String()}
	if w.Code == http.StatusAccepted {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &r.accepted), r.raw)
	} else {
		var eb httperr.Body
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &eb), "error body must be JSON: %s", r.raw)
		r.err = eb.Error
	}
	return r
}

func (b *bundle) outboxCount(t testing.TB) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_outbox`).Scan(&n))
	return n
}

// event returns a valid event object with overrides applied (nil deletes).
func event(overrides map[string]any) map[string]any {
	e := map[string]any{
		"action": "ticket.update",
		"actor":  map[string]any{"type": "user", "id": "u_42", "email": "Alice@Acme.io"},
		"source": "web",
	}
	for k, v := range overrides {
		if v == nil {
			delete(e, k)
			continue
		}
		e[k] = v
	}
	return e
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func batch(t testing.TB, events ...map[string]any) string {
	t.Helper()
	return mustJSON(t, map[string]any{"events": events})
}

func ndjson(t testing.TB, events ...map[string]any) string {
	t.Helper()
	var sb strings.Builder
	for _, e := range events {
		sb.WriteString(mustJSON(t, e))
		sb.WriteString("\n")
	}
	return sb.String()
}

func TestIngestSingle(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ctx := context.Background()

	r := b.post(t, b.writeSecret, "application/json; charset=utf-8", mustJSON(t, event(map[string]any{
		"ip":       "::ffff:203.0.113.7",
		"resource": map[string]any{"type": "ticket", "ids": map[string]any{"ticket": "t_981"}},
		"details":  map[string]any{"b": 1, "a": true},
	})))
	require.Equal(t, http.StatusAccepted, r.code, r.raw)
	require.Equal(t, 1, r.accepted.Accepted)
	require.Len(t, r.accepted.IDs, 1)
	require.EqualValues(t, 1, b.waker.n.Load())

	var (
		id, ws, action, actorType, email, source string
		ip                                       *netip.Addr
		ua, reqID, details                       *string
	)
	require.NoError(t, b.pool.QueryRow(ctx, `
		SELECT id::text, workspace_id, action, actor_type, actor_email, source, ip, user_agent, request_id, details
		FROM audit_outbox`).Scan(&id, &ws, &action, &actorType, &email, &source, &ip, &ua, &reqID, &details))
	require.Equal(t, r.accepted.IDs[0], id)
	require.Equal(t, "ws_acme", ws, "workspace defaults to the key's")
	require.Equal(t, "ticket.update", action)
	require.Equal(t, "user", actorType)
	require.Equal(t, "alice@acme.io", email)
	require.Equal(t, "web", source)
	require.NotNil(t, ip)
	require.Equal(t, "203.0.113.7", ip.String(), "the event's own ip, unmapped")
	require.Nil(t, ua, "the calling service's user agent is not the actor's")
	require.Nil(t, reqID, "the calling service's request id is not inherited")
	require.Equal(t, `{"a":true,"b":1}`, *details)
}

func TestIngestDoesNotInheritRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	r := b.post(t, b.writeSecret, "application/json", mustJSON(t, event(nil)))
	require.Equal(t, http.StatusAccepted, r.code, r.raw)
	var ip *netip.Addr
	var actorID string
	require.NoError(t, b.pool.QueryRow(context.Background(),
		`SELECT ip, actor_id FROM audit_outbox`).Scan(&ip, &actorID))
	require.Nil(t, ip, "the socket address is the calling service's, never the actor's")
	require.Equal(t, "u_42", actorID)
}

func TestIngestBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ids := []string{
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e71",
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e72",
		"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e73",
	}
	var events []map[string]any
	for i, id := range ids {
		events = append(events, event(map[string]any{"id": id, "action": fmt.Sprintf("member.invite_%d", i), "workspace_id": "ws_acme"}))
	}
	events = append(events, event(nil)) // id generated
	r := b.post(t, b.writeSecret, "application/json", batch(t, events...))
	require.Equal(t, http.StatusAccepted, r.code, r.raw)
	require.Equal(t, 4, r.accepted.Accepted)
	require.Equal(t, ids, r.accepted.IDs[:3])
	require.Len(t, r.accepted.IDs[3], 36)
	require.Equal(t, 4, b.outboxCount(t))

	rows, err := b.pool.Query(context.Background(), `SELECT id::text FROM audit_outbox ORDER BY pos`)
	require.NoError(t, err)
	var stored []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		stored = append(stored, s)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, r.accepted.IDs, stored)
}

func TestIngestNDJSON(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	body := "\n" + mustJSON(t, event(map[string]any{"id": "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e71"})) + "\r\n" +
		"   \n" +
		mustJSON(t, event(map[string]any{"action": "member.remove"})) + "\n\n" +
		mustJSON(t, event(map[string]any{"action": "member.invite"})) // no final newline
	r := b.post(t, b.writeSecret, "application/x-ndjson", body)
	require.Equal(t, http.StatusAccepted, r.code, r.raw)
	require.Equal(t, 3, r.accepted.Accepted)
	require.Len(t, r.accepted.IDs, 3)
	require.Equal(t, "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e71", r.accepted.IDs[0])
	require.Equal(t, 3, b.outboxCount(t))
	require.EqualValues(t, 1, b.waker.n.Load())
}

func TestIngestAtomic(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	events := []map[string]any{event(nil), event(nil), event(nil), event(map[string]any{"action": "Not An Action"}), event(nil)}

	t.Run("json batch", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", batch(t, events...))
		require.Equal(t, http.StatusBadRequest, r.code, r.raw)
		require.Equal(t, "events[3].action", r.err.Field)
		require.Equal(t, httperr.CodeInvalid, r.err.Code)
	})
	t.Run("ndjson", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/x-ndjson", "\n"+ndjson(t, events...))
		require.Equal(t, http.StatusBadRequest, r.code, r.raw)
		require.Equal(t, "events[3].action", r.err.Field)
		require.Contains(t, r.err.Message, "line 5:")
	})
	t.Run("decode error in ndjson", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/x-ndjson", ndjson(t, event(nil), event(map[string]any{"actor": "alice"})))
		require.Equal(t, http.StatusBadRequest, r.code, r.raw)
		require.Equal(t, "events[1].actor", r.err.Field)
		require.Contains(t, r.err.Message, "line 2:")
	})
	t.Run("single object has no index", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", mustJSON(t, event(map[string]any{"action": "x"})))
		require.Equal(t, http.StatusBadRequest, r.code, r.raw)
		require.Equal(t, "action", r.err.Field)
	})
	require.Zero(t, b.outboxCount(t), "nothing of a refused batch is stored")
	require.Zero(t, b.waker.n.Load())
}

func TestIngestActorNotInvented(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	r := b.post(t, b.writeSecret, "application/json", mustJSON(t, event(map[string]any{"actor": nil})))
	require.Equal(t, http.StatusBadRequest, r.code, r.raw)
	require.Equal(t, "actor.type", r.err.Field)
	r = b.post(t, b.writeSecret, "application/json", batch(t, event(nil), event(map[string]any{"actor": nil})))
	require.Equal(t, http.StatusBadRequest, r.code, r.raw)
	require.Equal(t, "events[1].actor.type", r.err.Field)
	require.Zero(t, b.outboxCount(t))
}

func TestIngestWorkspace(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	t.Run("single other workspace", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", mustJSON(t, event(map[string]any{"workspace_id": "ws_other"})))
		require.Equal(t, http.StatusForbidden, r.code, r.raw)
		require.Equal(t, httperr.CodeForbidden, r.err.Code)
		require.Equal(t, "workspace_id", r.err.Field)
	})
	t.Run("batch other workspace", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", batch(t, event(nil), event(map[string]any{"workspace_id": "ws_other"})))
		require.Equal(t, http.StatusForbidden, r.code, r.raw)
		require.Equal(t, "events[1].workspace_id", r.err.Field)
	})
	t.Run("ndjson other workspace", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/x-ndjson", ndjson(t, event(map[string]any{"workspace_id": "ws_other"})))
		require.Equal(t, http.StatusForbidden, r.code, r.raw)
		require.Equal(t, "events[0].workspace_id", r.err.Field)
	})
	t.Run("another workspace's key for this workspace", func(t *testing.T) {
		r := b.post(t, b.otherSecret, "application/json", mustJSON(t, event(map[string]any{"workspace_id": "ws_acme"})))
		require.Equal(t, http.StatusForbidden, r.code, r.raw)
		require.Equal(t, "workspace_id", r.err.Field)
	})
	t.Run("query string workspace", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events?workspace_id=ws_other", strings.NewReader(mustJSON(t, event(nil))))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+b.writeSecret)
		w := httptest.NewRecorder()
		b.engine.ServeHTTP(w, req)
		require.Equal(t, http.StatusForbidden, w.Code, w.Body.String())
		require.Contains(t, w.Body.String(), `"field":"workspace_id"`)
	})
	require.Zero(t, b.outboxCount(t))
	t.Run("explicit own workspace", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", mustJSON(t, event(map[string]any{"workspace_id": "ws_acme"})))
		require.Equal(t, http.StatusAccepted, r.code, r.raw)
	})
}

func TestIngestAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	body := mustJSON(t, event(nil))
	r := b.post(t, "", "application/json", body)
	require.Equal(t, http.StatusUnauthorized, r.code)
	r = b.post(t, b.readSecret, "application/json", body)
	require.Equal(t, http.StatusForbidden, r.code)
	require.Contains(t, r.err.Message, auth.ScopeWrite)
	require.Zero(t, b.outboxCount(t))
}

func TestIngestLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxBatch: 3, MaxBodyBytes: 2048})
	four := []map[string]any{event(nil), event(nil), event(nil), event(nil)}

	t.Run("json batch over max_batch", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", batch(t, four...))
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
		require.Equal(t, httperr.CodeTooLarge, r.err.Code)
		require.Equal(t, "events", r.err.Field)
	})
	t.Run("ndjson over max_batch", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/x-ndjson", ndjson(t, four...))
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
		require.Equal(t, "events", r.err.Field)
	})
	t.Run("max_batch exactly", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", batch(t, four[:3]...))
		require.Equal(t, http.StatusAccepted, r.code, r.raw)
	})
	big := mustJSON(t, event(map[string]any{"details": map[string]any{"pad": strings.Repeat("x", 3000)}}))
	t.Run("body over max_body_bytes with length", func(t *testing.T) {
		r := b.post(t, b.writeSecret, "application/json", big)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
		require.Equal(t, httperr.CodeTooLarge, r.err.Code)
	})
	t.Run("body over max_body_bytes chunked", func(t *testing.T) {
		r := b.postReq(t, b.writeSecret, "application/json", strings.NewReader(big), -1)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
	})
	t.Run("ndjson over max_body_bytes chunked", func(t *testing.T) {
		r := b.postReq(t, b.writeSecret, "application/x-ndjson", strings.NewReader(big+"\n"), -1)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
	})
	t.Run("ndjson many blank lines over max_body_bytes", func(t *testing.T) {
		r := b.postReq(t, b.writeSecret, "application/x-ndjson", strings.NewReader(strings.Repeat("\n", 4096)), -1)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.raw)
	})
	require.Equal(t, 3, b.outboxCount(t))
}

func TestIngestContentType(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	body := mustJSON(t, event(nil))
	for _, ct := range []string{"", "text/plain", "application/xml", "multipart/form-data; boundary=x",
		"application/json; charset=latin1", "application/json;;", "application/x-www-form-urlencoded"} {
		t.Run(ct, func(t *testing.T) {
			r := b.post(t, b.writeSecret, ct, body)
			require.Equal(t, http.StatusUnsupportedMediaType, r.code, r.raw)
			require.Equal(t, httperr.CodeUnsupportedMedia, r.err.Code)
		})
	}
	t.Run("gzip", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+b.writeSecret)
		w := httptest.NewRecorder()
		b.engine.ServeHTTP(w, req)
		require.Equal(t, http.StatusUnsupportedMediaType, w.Code)
	})
	require.Zero(t, b.outboxCount(t))
	r := b.post(t, b.writeSecret, "Application/JSON; charset=UTF-8", body)
	require.Equal(t, http.StatusAccepted, r.code, r.raw)
}

func TestIngestIdempotentResend(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	body := batch(t, event(map[string]any{
		"id":          "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77",
		"occurred_at": time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano),
	}))
	first := b.post(t, b.writeSecret, "application/json", body)
	require.Equal(t, http.StatusAccepted, first.code, first.raw)
	second := b.post(t, b.writeSecret, "application/json", body)
	require.Equal(t, http.StatusAccepted, second.code, second.raw)
	require.Equal(t, first.accepted.IDs, second.accepted.IDs)
	// Both are in the outbox; the relay stores the event once (its tests).
	require.Equal(t, 2, b.outboxCount(t))
}

// badBodies are inputs that must be refused with a 4xx naming the problem,
// never a 5xx, and never stored.
func badBodies(t testing.TB) []struct{ name, ct, body, field string } {
	deep := func(n int) string {
		return `{"action":"a.b","source":"web","actor":{"type":"system"},"details":` +
			strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) + "}"
	}
	deepArr := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	valid := mustJSON(t, event(nil))
	return []struct{ name, ct, body, field string }{
		{"empty", "application/json", "", ""},
		{"whitespace", "application/json", "  \n ", ""},
		{"null", "application/json", "null", ""},
		{"array", "application/json", "[" + valid + "]", ""},
		{"string", "application/json", `"event"`, ""},
		{"number", "application/json", `42`, ""},
		{"truncated", "application/json", valid[:len(valid)-3], ""},
		{"trailing garbage", "application/json", valid + "x", ""},
		{"two objects", "application/json", valid + valid, ""},
		{"invalid utf8", "application/json", `{"action":"a.b\xff","source":"web","actor":{"type":"system"}}`, ""},
		{"invalid utf8 in ndjson", "application/x-ndjson", `{"action":"a.b","source":"web\xfe","actor":{"type":"system"}}`, "events[0].event"},
		{"raw NUL byte", "application/json", "{\"action\":\"a.b\x00\"}", ""},
		{"escaped NUL in actor id", "application/json", `{"action":"a.b","source":"web","actor":{"type":"user","id":"u\u0000"}}`, "actor.id"},
		{"escaped NUL in action", "application/json", `{"action":"a.b\u0000","source":"web","actor":{"type":"system"}}`, "action"},
		{"escaped NUL in user agent", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"user_agent":"x\u0000"}`, "user_agent"},
		{"escaped NUL in resource id", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"resource":{"ids":{"t":"\u0000"}}}`, "resource.ids.t"},
		{"deep details", "application/json", deep(40), "details"},
		{"very deep details", "application/json", deep(20000), ""},
		{"very deep array", "application/json", deepArr, ""},
		{"very deep batch", "application/json", `{"events":` + deepArr + `}`, ""},
		{"details array", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"details":[1]}`, "details"},
		{"details string", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"details":"x"}`, "details"},
		{"action number", "application/json", `{"action":1,"source":"web","actor":{"type":"system"}}`, "action"},
		{"actor array", "application/json", `{"action":"a.b","source":"web","actor":[]}`, "actor"},
		{"actor type number", "application/json", `{"action":"a.b","source":"web","actor":{"type":7}}`, "actor.type"},
		{"ids array of objects", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"resource":{"ids":{"t":[{}]}}}`, "resource.ids.t"},
		{"ip garbage", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"ip":"999.1.1.1"}`, "ip"},
		{"ip with port", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"ip":"1.2.3.4:80"}`, "ip"},
		{"bad id", "application/json", `{"id":"123","action":"a.b","source":"web","actor":{"type":"system"}}`, "id"},
		{"bad occurred_at", "application/json", `{"occurred_at":"yesterday","action":"a.b","source":"web","actor":{"type":"system"}}`, "occurred_at"},
		{"occurred_at without offset", "application/json", `{"occurred_at":"2026-01-01T00:00:00","action":"a.b","source":"web","actor":{"type":"system"}}`, "occurred_at"},
		{"occurred_at far future", "application/json", `{"occurred_at":"9999-12-31T23:59:59Z","action":"a.b","source":"web","actor":{"type":"system"}}`, "occurred_at"},
		{"occurred_at year 0", "application/json", `{"occurred_at":"0000-01-01T00:00:00Z","action":"a.b","source":"web","actor":{"type":"system"}}`, "occurred_at"},
		{"action given twice", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"action":"c.d"}`, "action"},
		{"actor id given twice", "application/json", `{"action":"a.b","source":"web","actor":{"type":"user","id":"u_1","id":"u_2"}}`, "actor.id"},
		{"unknown field", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"severity":"high"}`, "severity"},
		{"no source", "application/json", `{"action":"a.b","actor":{"type":"system"}}`, "source"},
		{"huge action", "application/json", `{"action":"a.` + strings.Repeat("b", 100000) + `","source":"web","actor":{"type":"system"}}`, "action"},
		{"huge actor name", "application/json", `{"action":"a.b","source":"web","actor":{"type":"user","id":"u","name":"` + strings.Repeat("n", 100000) + `"}}`, "actor.name"},
		{"huge details", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"details":{"x":"` + strings.Repeat("d", 40000) + `"}}`, "details"},
		{"huge number in details", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"details":{"x":1e999}}`, "details"},
		{"duplicate keys in details", "application/json", `{"action":"a.b","source":"web","actor":{"type":"system"},"details":{"x":1,"x":2}}`, "details"},
		{"batch events null", "application/json", `{"events":null}`, "events"},
		{"batch events object", "application/json", `{"events":{}}`, "events"},
		{"batch empty", "application/json", `{"events":[]}`, "events"},
		{"batch with extra key", "application/json", `{"events":[` + valid + `],"workspace_id":"ws_acme"}`, "workspace_id"},
		{"batch of scalars", "application/json", `{"events":[1]}`, "events[0].event"},
		{"batch of nulls", "application/json", `{"events":[null]}`, "events[0].event"},
		{"ndjson empty", "application/x-ndjson", "\n\n \r\n", "events"},
		{"ndjson batch object line", "application/x-ndjson", `{"events":[` + valid + `]}`, "events[0].events"},
		{"ndjson array line", "application/x-ndjson", "[" + valid + "]", "events[0].event"},
		{"ndjson garbage line", "application/x-ndjson", valid + "\n{oops\n", "events[1].event"},
		{"ndjson two objects on a line", "application/x-ndjson", valid + valid, "events[0].event"},
		{"ndjson stray brace after the object", "application/x-ndjson", valid + "}", "events[0].event"},
		{"batch stray bracket", "application/json", `{"events":[` + valid + `]]}`, ""},
	}
}

func TestIngestBadBodies(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxBodyBytes: 1 << 20})
	for _, tc := range badBodies(t) {
		t.Run(tc.name, func(t *testing.T) {
			r := b.post(t, b.writeSecret, tc.ct, tc.body)
			require.Equal(t, http.StatusBadRequest, r.code, r.raw)
			require.Equal(t, httperr.CodeInvalid, r.err.Code)
			require.NotEmpty(t, r.err.Message)
			if tc.field != "" {
				require.Equal(t, tc.field, r.err.Field, r.raw)
			}
		})
	}
	require.Zero(t, b.outboxCount(t))
}

func TestIngestDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	gin.SetMode(gin.ReleaseMode)
	pool := apitest.DeadPool(t)

	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	waker := &countingWaker{}
	h, err := New(Config{}, Deps{Pool: pool, Recorder: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Waker: waker})
	require.NoError(t, err)
	engine := gin.New()
	// The key as the auth middleware would have set it; auth's own 503 is
	// tested in package auth.
	h.Register(engine.Group("/v1", func(c *gin.Context) {
		auth.SetKey(c, auth.Key{ID: "k", WorkspaceID: "ws_acme", Scopes: []string{auth.ScopeWrite}})
	}))
	req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(mustJSON(t, event(nil))))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	engine.ServeHTTP(w, req)
	require.Equal(t, http.StatusServiceUnavailable, w.Code, w.Body.String())
	var eb httperr.Body
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &eb))
	require.Equal(t, httperr.CodeUnavailable, eb.Error.Code)
	require.Contains(t, eb.Error.Message, "database is unavailable")
	require.Zero(t, waker.n.Load())
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	deps := Deps{Pool: &pgxpool.Pool{}, Recorder: &outbox.Recorder{}, Logger: slog.Default()}
	for name, cfg := range map[string]Config{
		"MaxBatch":     {MaxBatch: -1},
		"MaxBodyBytes": {MaxBodyBytes: 1},
		"Timeout":      {Timeout: -time.Second},
	} {
		_, err := New(cfg, deps)
		require.ErrorContains(t, err, name)
	}
	_, err := New(Config{}, Deps{Recorder: deps.Recorder, Logger: deps.Logger})
	require.ErrorContains(t, err, "Pool")
}

// FuzzIngest posts arbitrary bodies, as JSON and as NDJSON, and requires an
// answer below 500: bad input is the client's problem, never the server's.
// One database serves every input.
func FuzzIngest(f *testing.F) {
	valid := mustJSON(f, event(nil))
	f.Add(valid, false)
	f.Add(batch(f, event(nil), event(map[string]any{"action": "x"})), false)
	f.Add(ndjson(f, event(nil), event(nil)), true)
	f.Add(`{"events":[{"action":"a.b","source":"web","actor":{"type":"system"},"details":{"a":[1,2,{"b":null}]}}]}`, false)
	f.Add(`{"action":"a.b","source":"web","actor":{"type":"user","email":"A@B"},"resource":{"ids":{"t":[1,"2",3.5]}},"ip":"::ffff:1.2.3.4"}`, false)
	f.Add("{\"action\":\"a.b\\u0000\"}\n\xff\n", true)
	// The batch walker: an escaped "events" key, members after the
	// array, "events" not first, a separator missing.
	f.Add(`{"\u0065vents":[`+valid+`]}`, false)
	f.Add(`{"events":[`+valid+`],"x":1}`, false)
	f.Add(`{"action":"a.b","events":[]}`, false)
	f.Add(`{"events":[`+valid+` `+valid+`]}`, false)
	for _, tc := range badBodies(f) {
		if len(tc.body) < 4096 {
			f.Add(tc.body, tc.ct == "application/x-ndjson")
		}
	}
	b := setup(f, Config{MaxBatch: 50, MaxBodyBytes: 64 << 10})
	f.Fuzz(func(t *testing.T, body string, nd bool) {
		ct := "application/json"
		if nd {
			ct = "application/x-ndjson"
		}
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader([]byte(body)))
		req.Header.Set("Content-Type", ct)
		req.Header.Set("Authorization", "Bearer "+b.writeSecret)
		w := httptest.NewRecorder()
		b.engine.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body.String())
		}
		if w.Code != http.StatusAccepted && !json.Valid(w.Body.Bytes()) {
			t.Fatalf("error body is not JSON: %q", w.Body.String())
		}
	})
}

// BenchmarkIngest posts batches through auth and ingest into a real outbox
// and reports events/s. Run: go test ./api/ingest -run '^$' -bench Ingest
func BenchmarkIngest(b *testing.B) {
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			bb := setup(b, Config{})
			events := make([]map[string]any, size)
			for i := range events {
				events[i] = event(map[string]any{
					"resource": map[string]any{"type": "ticket", "ids": map[string]any{"ticket": fmt.Sprintf("t_%d", i)}},
					"details":  map[string]any{"changes": map[string]any{"status": map[string]any{"from": "open", "to": "closed"}}},
				})
			}
			body := []byte(batch(b, events...))
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+bb.writeSecret)
				w := httptest.NewRecorder()
				bb.engine.ServeHTTP(w, req)
				if w.Code != http.StatusAccepted {
					b.Fatalf("status %d: %s", w.Code, w.Body.String())
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
