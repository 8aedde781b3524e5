package events

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/api/internal/apitest"
)

// getPage runs GET /v1/events and decodes a 200 response.
func getPage(t *testing.T, r http.Handler, q url.Values) Page {
	t.Helper()
	w := do(r, "/v1/events", q)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"))
	var p Page
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &p))
	return p
}

// TestQueryMatchesModel pages through random filter combinations over 2,000
// random events in two workspaces and compares every page, event by event
// and field by field, with the answer computed in Go.
func TestQueryMatchesModel(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(timeSeed(t), 42))
	pool, all := datasetDB(t, rng, 2000)
	h := newHandlers(t, pool, Config{})
	routers := map[string]http.Handler{"ws_a": testRouter(h, readKey("ws_a")), "ws_b": testRouter(h, readKey("ws_b"))}

	nonEmpty := 0
	for combo := range 150 {
		raw := randomFilters(rng)
		f, err := ParseFilters(url.Values(raw))
		require.NoError(t, err)
		ws := pick(rng, []string{"ws_a", "ws_b"})
		want := expected(all, ws, f)
		slices.Reverse(want) // the API is newest first
		if len(want) > 0 {
			nonEmpty++
		}
		// Small pages, but at most ~25 of them per combination.
		limit := max(1+rng.IntN(60), (len(want)+24)/25)
		var got []Event
		q := url.Values(raw)
		q.Set(paramLimit, strconv.Itoa(limit))
		for pages := 0; ; pages++ {
			require.Less(t, pages, 100, "runaway pagination")
			p := getPage(t, routers[ws], q)
			got = append(got, p.Data...)
			if p.NextCursor == nil {
				require.LessOrEqual(t, len(p.Data), limit)
				break
			}
			require.Len(t, p.Data, limit, "a page with a next cursor is full")
			q.Set(paramCursor, *p.NextCursor)
		}
		wantIDs, gotIDs := make([]string, len(want)), make([]string, len(got))
		for i := range want {
			wantIDs[i] = want[i].ID
		}
		for i := range got {
			gotIDs[i] = got[i].ID
		}
		require.Equal(t, wantIDs, gotIDs, "combination %d: %v in %s, limit %d", combo, raw, ws, limit)
		for i := range want {
			require.Positive(t, got[i].Seq)
			got[i].Seq = 0
			require.Equal(t, want[i].asEvent(), got[i], "combination %d: %v in %s, event %d", combo, raw, ws, i)
		}
	}
	require.Greater(t, nonEmpty, 50, "the random combinations should mostly match something")
}

// TestQueryEventShape checks the exact keys of an event and that details
// and resource ids are the stored bytes, not re-encoded.
func TestQueryEventShape(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	pool, all := datasetDB(t, rng, 200)
	h := newHandlers(t, pool, Config{})
	w := do(testRouter(h, readKey("ws_a")), "/v1/events", url.Values{"limit": {"1000"}})
	require.Equal(t, http.StatusOK, w.Code)
	body := w.Body.String()

	var page struct {
		Data       []map[string]json.RawMessage `json:"data"`
		NextCursor *string                      `json:"next_cursor"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &page))
	require.Nil(t, page.NextCursor)
	require.Len(t, page.Data, len(expected(all, "ws_a", Filters{})))
	keys := func(m map[string]json.RawMessage) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	for _, e := range page.Data {
		require.Equal(t, []string{"action", "actor", "details", "id", "ip", "occurred_at", "recorded_at",
			"request_id", "resource", "seq", "source", "user_agent", "workspace_id"}, keys(e))
		var actor, resource map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(e["actor"], &actor))
		require.NoError(t, json.Unmarshal(e["resource"], &resource))
		require.Equal(t, []string{"email", "id", "name", "type"}, keys(actor))
		require.Equal(t, []string{"ids", "type"}, keys(resource))
	}
	// The canonical details with < & > and U+2028 appear byte for byte.
	require.Contains(t, body, "\"details\":{\"a\":\"<&> \u2028 \\\"q\\\", x\",\"b\":1}")
	require.Contains(t, body, `"ids":{"channel":"C0451","odd":"a;b=c,d%","ticket":["t_1","t_2"]}`)
	require.NotContains(t, body, `\u003c`)
}

// TestQueryTenantIsolation: a key sees only its workspace, cannot name
// another, and cannot use another workspace's cursor.
func TestQueryTenantIsolation(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	pool, _ := datasetDB(t, rng, 300)
	h := newHandlers(t, pool, Config{})
	ra, rb := testRouter(h, readKey("ws_a")), testRouter(h, readKey("ws_b"))

	pa := getPage(t, ra, url.Values{"limit": {"1000"}})
	require.NotEmpty(t, pa.Data)
	for _, e := range pa.Data {
		require.Equal(t, "ws_a", e.WorkspaceID)
	}

	w := do(ra, "/v1/events", url.Values{"workspace_id": {"ws_b"}})
	require.Equal(t, http.StatusForbidden, w.Code)
	require.Equal(t, "workspace_id", decodeErr(t, w).Error.Field)
	w = do(ra, "/v1/events/export", url.Values{"workspace_id": {"ws_a", "ws_b"}})
	require.Equal(t, http.StatusForbidden, w.Code)
	// Naming one's own workspace is fine.
	w = do(ra, "/v1/events", url.Values{"workspace_id": {"ws_a"}, "limit": {"1"}})
	require.Equal(t, http.StatusOK, w.Code)

	// A cursor from ws_a's query is refused under ws_b's key, same filters.
	p := getPage(t, ra, url.Values{"limit": {"2"}})
	require.NotNil(t, p.NextCursor)
	w = do(rb, "/v1/events", url.Values{"limit": {"2"}, "cursor": {*p.NextCursor}})
	require.Equal(t, http.StatusBadRequest, w.Code)
	b := decodeErr(t, w)
	require.Equal(t, "invalid_request", b.Error.Code)
	require.Equal(t, "cursor", b.Error.Field)
}

// TestQueryCursorRefused: tampered, truncated, foreign-filter and garbage
// cursors are 400 field cursor; the genuine one works and the page size
// may change between pages.
func TestQueryCursorRefused(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	pool, _ := datasetDB(t, rng, 300)
	h := newHandlers(t, pool, Config{})
	r := testRouter(h, readKey("ws_a"))

	base := url.Values{"limit": {"3"}, "source": {"web", "api"}}
	p := getPage(t, r, base)
	require.NotNil(t, p.NextCursor)
	cur := *p.NextCursor

	with := func(extra url.Values, c string) url.Values {
		q := url.Values{}
		for k, v := range base {
			q[k] = slices.Clone(v)
		}
		for k, v := range extra {
			q[k] = v
		}
		q.Set("cursor", c)
		return q
	}
	raw, err := base64.RawURLEncoding.DecodeString(cur)
	require.NoError(t, err)
	flip := func(i int) string {
		b := slices.Clone(raw)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	// An equivalent filter set (order, case, duplicates) keeps the cursor valid.
	require.Equal(t, http.StatusOK, do(r, "/v1/events", with(url.Values{"source": {"API", "web", "web"}, "limit": {"50"}}, cur)).Code)

	bad := map[string]url.Values{
		"other filter value":              with(url.Values{"source": {"web"}}, cur),
		"extra filter":                    with(url.Values{"action": {"ticket.*"}}, cur),
		"time bound":                      with(url.Values{"from": {"2026-01-01T00:00:00Z"}}, cur),
		"flipped timestamp":               with(nil, flip(3)),
		"flipped id":                      with(nil, flip(12)),
		"flipped mac":                     with(nil, flip(len(raw)-1)),
		"flipped version":                 with(nil, flip(0)),
		"truncated":                       with(nil, cur[:len(cur)-2]),
		"padded":                          with(nil, cur+"="),
		"garbage":                         with(nil, "not-a-cursor"),
		"standard base64":                 with(nil, base64.StdEncoding.EncodeToString(raw)),
		"sql in cursor":                   with(nil, "'; DROP TABLE audit_events; --"),
		"given twice":                     func() url.Values { q := with(nil, cur); q.Add("cursor", cur); return q }(),
		"flipped id, own workspace named": with(url.Values{"workspace_id": {"ws_a"}}, flip(20)),
	}
	for name, q := range bad {
		w := do(r, "/v1/events", q)
		require.Equal(t, http.StatusBadRequest, w.Code, name)
		require.Equal(t, "cursor", decodeErr(t, w).Error.Field, name)
	}

	// An empty cursor is no cursor: the first page.
	require.Equal(t, p, getPage(t, r, with(nil, "")))
}

// TestQueryBadParams: every bad value is a 400 naming its parameter, and
// unknown parameters are named.
func TestQueryBadParams(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	h := newHandlers(t, pool, Config{})
	r := testRouter(h, readKey("ws_a"))
	long := strings.Repeat("a", 129)
	cases := []struct {
		q     string
		field string
	}{
		{"actor_email=nobody", "actor_email"},
		{"actor_email=a@b@c", "actor_email"},
		{"actor_email=", "actor_email"},
		{"actor_email=a%20b@c", "actor_email"},
		{"actor_id=", "actor_id"},
		{"actor_id=%00x", "actor_id"},
		{"actor_id=%ff", "actor_id"},
		{"actor_id=" + long, "actor_id"},
		{"action=Ticket.Create", "action"},
		{"action=ticket", "action"},
		{"action=*", "action"},
		{"action=ticket.**", "action"},
		{"action=tick*et", "action"},
		{"action=ticket.%27%3B--", "action"},
		{"action=ticket.x;source=web", ""}, // a raw ';' is not silently dropped
		{"resource_type=Ticket", "resource_type"},
		{"resource_type=a.b", "resource_type"},
		{"source=we+b", "source"},
		{"source=" + strings.Repeat("s", 33), "source"},
		{"from=yesterday", "from"},
		{"from=2026-11-01T00:00:00", "from"},
		{"from=2026-11-01T00:00:00Z&from=2026-11-02T00:00:00Z", "from"},
		{"to=2026-11-01", "to"},
		{"from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "to"},
		{"limit=0", "limit"},
		{"limit=1001", "limit"},
		{"limit=ten", "limit"},
		{"limit=1&limit=2", "limit"},
		{"actor=alice", "actor"},
		{"format=csv", "format"}, // export's parameter, not the query's
		{"Action=ticket.create", "Action"},
		{strings.TrimSuffix(strings.Repeat("source=web&", MaxFilterValues+1), "&"), "source"},
	}
	for _, tc := range cases {
		req, err := http.NewRequest(http.MethodGet, "/v1/events?"+tc.q, nil)
		require.NoError(t, err)
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		require.Equal(t, http.StatusBadRequest, w.Code, tc.q)
		b := decodeErr(t, w)
		require.Equal(t, "invalid_request", b.Error.Code, tc.q)
		require.Equal(t, tc.field, b.Error.Field, tc.q)
	}
}

// TestQueryAuth: no key is 401, a key without events:read is 403.
func TestQueryAuth(t *testing.T) {
	t.Parallel()
	pool := newTestDB(t)
	h := newHandlers(t, pool, Config{})
	for _, path := range []string{"/v1/events", "/v1/events/export"} {
		w := do(testRouter(h, auth.Key{}), path, nil)
		require.Equal(t, http.StatusUnauthorized, w.Code, path)
		w = do(testRouter(h, auth.Key{ID: "k", WorkspaceID: "ws_a", Scopes: []string{auth.ScopeWrite}}), path, nil)
		require.Equal(t, http.StatusForbidden, w.Code, path)
	}
}

// TestCursorKeyShared: two handler sets on one database (two instances)
// share the signing key, created once.
func TestCursorKeyShared(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 8))
	pool, _ := datasetDB(t, rng, 100)
	r1 := testRouter(newHandlers(t, pool, Config{}), readKey("ws_a"))
	r2 := testRouter(newHandlers(t, pool, Config{}), readKey("ws_a"))
	p := getPage(t, r1, url.Values{"limit": {"5"}})
	require.NotNil(t, p.NextCursor)
	p2 := getPage(t, r2, url.Values{"limit": {"5"}, "cursor": {*p.NextCursor}})
	require.NotEmpty(t, p2.Data)
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM auditlog_settings WHERE name = 'cursor_key' AND length(value) = 32`).Scan(&n))
	require.Equal(t, 1, n)
}

// TestReadsWithoutTheDatabase: while the database is missing (dropped, or
// not created yet) the server refuses every connection; the query and both
// export formats are 503, as /readyz is, not 500.
func TestReadsWithoutTheDatabase(t *testing.T) {
	t.Parallel()
	h := newHandlers(t, apitest.MissingDatabasePool(t), Config{})
	r := testRouter(h, readKey("ws_a"))
	for _, q := range []struct{ path, format string }{
		{"/v1/events", ""}, {"/v1/events/export", "csv"}, {"/v1/events/export", "ndjson"},
	} {
		var v url.Values
		if q.format != "" {
			v = url.Values{"format": {q.format}}
		}
		w := do(r, q.path, v)
		require.Equal(t, http.StatusServiceUnavailable, w.Code, "%s %s: %s", q.path, q.format, w.Body.String())
		require.Equal(t, "unavailable", decodeErr(t, w).Error.Code, q.path)
	}
}
