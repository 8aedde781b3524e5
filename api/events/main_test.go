package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/api/auth"
	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	goleak.VerifyTestMain(m)
}

// testNow is the clock of the recorder that writes test events, so their
// times are fixed and inside the retention window.
var testNow = time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)

// The request info a real RequestContext middleware would have resolved.
const (
	testClientIP  = "198.51.100.9"
	testUserAgent = "test-agent/1.0"
	testRequestID = "req_test"
)

// createPartitions creates monthly partitions of audit_events covering
// [from, to). Names and bounds come from the code, not from input.
func createPartitions(t testing.TB, pool *pgxpool.Pool, from, to time.Time) {
	t.Helper()
	ctx := context.Background()
	m := time.Date(from.Year(), from.Month(), 1, 0, 0, 0, 0, time.UTC)
	for ; m.Before(to); m = m.AddDate(0, 1, 0) {
		next := m.AddDate(0, 1, 0)
		stmt := fmt.Sprintf(`CREATE TABLE audit_events_p%s PARTITION OF audit_events FOR VALUES FROM ('%s') TO ('%s')`,
			m.Format("200601"), m.Format("2006-01-02"), next.Format("2006-01-02"))
		_, err := pool.Exec(ctx, stmt)
		require.NoError(t, err)
	}
}

// newTestDB returns a fresh database with partitions for Sep 2026 - Jan 2027.
func newTestDB(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := testdb.New(t)
	createPartitions(t, pool, time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	return pool
}

// datasetDB returns a fresh database (newTestDB) holding n random events
// drawn from rng (genDataset), and the model of those events.
func datasetDB(t testing.TB, rng *rand.Rand, n int) (*pgxpool.Pool, []wantEvent) {
	t.Helper()
	pool := newTestDB(t)
	in, all := genDataset(rng, n)
	insertEvents(t, pool, in)
	return pool, all
}

// timeSeed returns a seed from the clock and logs it, so a failing random
// run can be reproduced.
func timeSeed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return seed
}

// moveOutboxSQL stands in for the relay: every outbox row except export
// events becomes a stored event, seq taken from the outbox position.
const moveOutboxSQL = `
WITH moved AS (
    DELETE FROM audit_outbox WHERE action <> 'audit_log.export' RETURNING *
)
INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details)
SELECT pos, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details
FROM moved`

// insertEvents records es through the real recorder (so they are stored in
// their canonical forms) and moves them into audit_events.
func insertEvents(t testing.TB, pool *pgxpool.Pool, es []outbox.Event) {
	t.Helper()
	rec, err := outbox.New(outbox.Options{Now: func() time.Time { return testNow }})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for i := 0; i < len(es); i += 1000 {
			if err := rec.RecordBatch(ctx, tx, es[i:min(i+1000, len(es))]); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, moveOutboxSQL)
		return err
	}))
}

// bulkInsertFormat generates n synthetic events quickly into a staging
// table %s, for plans, disconnects and benchmarks: one every step ms from
// start; every 10th in ws_b, the rest in ws_a; 500 actors, 5 actions, 5
// sources, 7 resource types, spread so the columns are not correlated.
const bulkInsertFormat = `
INSERT INTO %s (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids, resource_ids_flat, source,
    ip, user_agent, request_id, details)
SELECT g, gen_random_uuid(),
       CASE WHEN g %% 10 = 0 THEN 'ws_b' ELSE 'ws_a' END,
       $1::timestamptz + (g * $2::bigint) * interval '1 millisecond',
       $1::timestamptz + (g * $2::bigint + 40) * interval '1 millisecond',
       (ARRAY['ticket.create','ticket.update','ticket.close','member.invite','member.remove'])[1 + g %% 5],
       'user', 'u_' || (g %% 500), 'user' || (g %% 500) || '@acme.io', 'User, "' || (g %% 500) || '"',
       (ARRAY['ticket','member','channel','automation','workflow','key','team'])[1 + (g / 3) %% 7],
       '{"ticket":"t_' || g || '"}', 'ticket=t_' || g,
       (ARRAY['web','api','slack','workflow','system'])[1 + (g / 7) %% 5],
       ('203.0.113.' || (g %% 250))::inet, 'Mozilla/5.0 (X11; Linux x86_64)', 'req_' || g,
       '{"changes":{"status":{"from":"open","to":"closed"}},"note":"line1\nline2, with comma"}'
FROM generate_series(1, $3::int) AS g`

// bulkInsert adds n synthetic events from start, one every stepMS, as a
// new partition for start's month (the data must fit in it). Loading a
// bare table and attaching it builds the indexes once, far faster than
// maintaining them row by row.
func bulkInsert(t testing.TB, pool *pgxpool.Pool, start time.Time, stepMS int64, n int) {
	t.Helper()
	ctx := context.Background()
	month := time.Date(start.Year(), start.Month(), 1, 0, 0, 0, 0, time.UTC)
	next := month.AddDate(0, 1, 0)
	require.True(t, start.Add(time.Duration(int64(n+1)*stepMS)*time.Millisecond).Before(next), "bulk data must fit in one month")
	name := "audit_events_p" + month.Format("200601")
	_, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`, name))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, fmt.Sprintf(bulkInsertFormat, name), start, stepMS, n)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, fmt.Sprintf(`ALTER TABLE audit_events ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')`,
		name, month.Format("2006-01-02"), next.Format("2006-01-02")))
	require.NoError(t, err)
}

// analyze refreshes the planner's statistics.
func analyze(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `ANALYZE audit_events`)
	require.NoError(t, err)
}

// testRouter serves h behind a stand-in for the auth and request-context
// middleware: every request is authenticated as key.
func testRouter(h *Handlers, key auth.Key) *gin.Engine {
	r := gin.New()
	r.Use(func(c *gin.Context) {
		ctx := outbox.WithRequestInfo(c.Request.Context(), outbox.RequestInfo{
			WorkspaceID: key.WorkspaceID, Source: "api", IP: testClientIP,
			UserAgent: testUserAgent, RequestID: testRequestID,
		})
		c.Request = c.Request.WithContext(ctx)
		if key.WorkspaceID != "" {
			auth.SetKey(c, key)
		}
		c.Next()
	})
	h.Register(r.Group("/v1"))
	return r
}

func readKey(ws string) auth.Key {
	return auth.Key{ID: "0193f2a4-0000-7000-8000-" + fmt.Sprintf("%012x", len(ws)), WorkspaceID: ws, Name: "reader " + ws, Scopes: []string{auth.ScopeRead}}
}

func newHandlers(t testing.TB, pool *pgxpool.Pool, cfg Config) *Handlers {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	h, err := New(pool, cfg)
	require.NoError(t, err)
	return h
}

// do runs one in-process request.
func do(r http.Handler, path string, q url.Values) *httptest.ResponseRecorder {
	target := path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req := httptest.NewRequest(http.MethodGet, target, nil)
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	return w
}

// errBody is the contract's error shape.
type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

func decodeErr(t testing.TB, w *httptest.ResponseRecorder) errBody {
	t.Helper()
	var b errBody
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &b), w.Body.String())
	return b
}

// exportEvents returns the audit_log.export events waiting in the outbox.
type recordedExport struct {
	Workspace, ActorType string
	ActorID, ActorName   *string
	Source               string
	IP, UA, RequestID    *string
	Details              map[string]any
}

func exportEvents(t testing.TB, pool *pgxpool.Pool) []recordedExport {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT workspace_id, actor_type, actor_id, actor_name, source, host(ip), user_agent, request_id, details
FROM audit_outbox WHERE action = 'audit_log.export' ORDER BY pos`)
	require.NoError(t, err)
	defer rows.Close()
	var out []recordedExport
	for rows.Next() {
		var e recordedExport
		var details string
		require.NoError(t, rows.Scan(&e.Workspace, &e.ActorType, &e.ActorID, &e.ActorName, &e.Source, &e.IP, &e.UA, &e.RequestID, &details))
		require.NoError(t, json.Unmarshal([]byte(details), &e.Details))
		out = append(out, e)
	}
	require.NoError(t, rows.Err())
	return out
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
