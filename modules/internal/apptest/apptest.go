// Package apptest is the helpdesk modules' test bench: a fresh migrated
// database (internal/testdb), every module mounted on a gin engine behind a
// tiny request middleware that puts outbox.RequestInfo on the context the
// way the real client-IP middleware does, helpers to create members and
// send requests, and readers of audit_outbox. For tests only.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/modules"
	"github.com/auditlog/auditlog/modules/members"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
)

// Request info the test middleware puts on every request.
const (
	IP        = "203.0.113.7"
	UserAgent = "apptest/1.0"
	// HeaderIP overrides the IP for one request (to test a bad one).
	HeaderIP = "X-Test-IP"
	// HeaderRequestID sets the request id; default "req_test".
	HeaderRequestID = "X-Request-ID"
	// SlackSecret is the signing secret the bench's Slack module uses.
	SlackSecret = "apptest-slack-signing-secret"
)

// Env is one test's bench.
type Env struct {
	T       testing.TB
	Pool    *pgxpool.Pool
	Logger  *slog.Logger
	Engine  *gin.Engine
	Modules *modules.Modules
}

// New returns a bench on a fresh database with every module mounted.
func New(t testing.TB) *Env {
	t.Helper()
	gin.SetMode(gin.TestMode)
	pool := testdb.New(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	mods, err := modules.New(pool, logger, modules.Config{SlackSigningSecret: SlackSecret})
	require.NoError(t, err)
	engine := gin.New()
	mods.Register(engine.Group("", RequestInfo("web")))
	return &Env{T: t, Pool: pool, Logger: logger, Engine: engine, Modules: mods}
}

// RequestInfo is the tiny stand-in for the client-IP middleware: source as
// given, IP from X-Test-IP or IP, the request's user agent (UserAgent when
// none) and request id (X-Request-ID or "req_test").
func RequestInfo(source string) gin.HandlerFunc {
	return func(c *gin.Context) {
		info := outbox.RequestInfo{Source: source, IP: IP, UserAgent: c.Request.UserAgent(), RequestID: "req_test"}
		if ip := c.GetHeader(HeaderIP); ip != "" {
			info.IP = ip
		}
		if info.UserAgent == "" {
			info.UserAgent = UserAgent
		}
		if id := c.GetHeader(HeaderRequestID); id != "" {
			info.RequestID = id
		}
		c.Request = c.Request.WithContext(outbox.WithRequestInfo(c.Request.Context(), info))
		c.Next()
	}
}

// Member is a member created for a test, with its token.
type Member struct {
	ID          string
	WorkspaceID string
	Email       string
	Name        string
	Role        session.Role
	Token       string
}

// Actor is the member as the audit actor its requests should produce.
func (m Member) Actor() Actor {
	return Actor{Type: "user", ID: m.ID, Email: m.Email, Name: m.Name}
}

// NewMember creates a member directly (as an operator would, with a service
// actor and source "system") and returns it with its token.
func (e *Env) NewMember(ws, email, name string, role session.Role, slackUserID string) Member {
	e.T.Helper()
	ctx := outbox.WithActor(context.Background(), outbox.Actor{Type: outbox.ActorService, ID: "apptest"})
	ctx = outbox.WithRequestInfo(ctx, outbox.RequestInfo{Source: "system"})
	inv, err := members.Invite(ctx, e.Pool, ws, members.NewMember{Email: email, Name: name, Role: role, SlackUserID: slackUserID})
	require.NoError(e.T, err)
	return Member{ID: inv.Member.ID, WorkspaceID: ws, Email: inv.Member.Email, Name: inv.Member.Name, Role: role, Token: inv.Token}
}

// NewTicket creates an open ticket with subject through POST /app/tickets
// as the member whose token is given and returns its id.
func (e *Env) NewTicket(token, subject string) string {
	e.T.Helper()
	w := e.Do(http.MethodPost, "/app/tickets", token, map[string]any{"subject": subject})
	RequireStatus(e.T, w, http.StatusCreated)
	return JSON(e.T, w)["id"].(string)
}

// TicketStatus reads the stored status of ticket id.
func (e *Env) TicketStatus(id string) string {
	e.T.Helper()
	var s string
	require.NoError(e.T, e.Pool.QueryRow(context.Background(), `SELECT status FROM tickets WHERE id = $1`, id).Scan(&s))
	return s
}

// Do sends a request to the engine: body is JSON-encoded unless it is a
// string or []byte (sent as is, as JSON). headers are name, value pairs.
func (e *Env) Do(method, path, token string, body any, headers ...string) *httptest.ResponseRecorder {
	e.T.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = bytes.NewBufferString(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(e.T, err)
		r = bytes.NewReader(raw)
	}
	req := httptest.NewRequest(method, path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	e.Engine.ServeHTTP(w, req)
	return w
}

// JSON decodes a response body into a map.
func JSON(t testing.TB, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &m), "body: %s", w.Body.String())
	return m
}

// RequireError checks an error response: status, the API's error shape, and
// the field it names.
func RequireError(t testing.TB, w *httptest.ResponseRecorder, status int, field string) {
	t.Helper()
	require.Equal(t, status, w.Code, "body: %s", w.Body.String())
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body), "body: %s", w.Body.String())
	require.NotEmpty(t, body.Error.Code)
	require.NotEmpty(t, body.Error.Message)
	require.Equal(t, field, body.Error.Field, "body: %s", w.Body.String())
}

// Actor is an event's actor as stored.
type Actor struct {
	Type, ID, Email, Name string
}

// Event is one audit_outbox row.
type Event struct {
	WorkspaceID     string
	Action          string
	Actor           Actor
	ResourceType    string
	ResourceIDs     string
	ResourceIDsFlat string
	Source          string
	// IP is "" when null.
	IP        string
	UserAgent string
	RequestID string
	// Details is the canonical JSON text; DetailsMap its decoded form.
	Details    string
	DetailsMap map[string]any
}

const selectEventsSQL = `
SELECT workspace_id, action, actor_type, coalesce(actor_id, ''), coalesce(actor_email, ''),
       coalesce(actor_name, ''), coalesce(resource_type, ''), coalesce(resource_ids, ''),
       resource_ids_flat, source, coalesce(host(ip), ''), coalesce(user_agent, ''),
       coalesce(request_id, ''), coalesce(details, '')
FROM audit_outbox WHERE action = $1 ORDER BY pos`

// Events returns the outbox rows of action, oldest first.
func (e *Env) Events(action string) []Event {
	e.T.Helper()
	rows, err := e.Pool.Query(context.Background(), selectEventsSQL, action)
	require.NoError(e.T, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var ev Event
		err := r.Scan(&ev.WorkspaceID, &ev.Action, &ev.Actor.Type, &ev.Actor.ID, &ev.Actor.Email, &ev.Actor.Name,
			&ev.ResourceType, &ev.ResourceIDs, &ev.ResourceIDsFlat, &ev.Source, &ev.IP, &ev.UserAgent,
			&ev.RequestID, &ev.Details)
		if err == nil && ev.Details != "" {
			err = json.Unmarshal([]byte(ev.Details), &ev.DetailsMap)
		}
		return ev, err
	})
	require.NoError(e.T, err)
	return out
}

// OneEvent returns the single outbox row of action, failing when there is
// not exactly one.
func (e *Env) OneEvent(action string) Event {
	e.T.Helper()
	evs := e.Events(action)
	require.Len(e.T, evs, 1, "events of %s", action)
	return evs[0]
}

// Count runs a SELECT count(*) ... query.
func (e *Env) Count(query string, args ...any) int {
	e.T.Helper()
	var n int
	require.NoError(e.T, e.Pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// OutboxCount is the number of outbox rows of action.
func (e *Env) OutboxCount(action string) int {
	e.T.Helper()
	return e.Count(`SELECT count(*) FROM audit_outbox WHERE action = $1`, action)
}

// failOutboxSQL installs a trigger refusing outbox writes of the actions
// listed in apptest_fail_actions.
const failOutboxSQL = `
CREATE TABLE IF NOT EXISTS apptest_fail_actions (action text PRIMARY KEY);
CREATE OR REPLACE FUNCTION apptest_fail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM apptest_fail_actions WHERE action = NEW.action) THEN
        RAISE EXCEPTION 'apptest: outbox write of % refused', NEW.action;
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER apptest_fail_outbox BEFORE INSERT ON audit_outbox
FOR EACH ROW EXECUTE FUNCTION apptest_fail_outbox();`

// FailOutbox makes every later write of an action's event into audit_outbox
// fail inside the database, as a full disk or a broken outbox would: the
// business change made before it in the same transaction must roll back too.
func (e *Env) FailOutbox(action string) {
	e.T.Helper()
	ctx := context.Background()
	_, err := e.Pool.Exec(ctx, failOutboxSQL)
	require.NoError(e.T, err)
	_, err = e.Pool.Exec(ctx, `INSERT INTO apptest_fail_actions (action) VALUES ($1) ON CONFLICT DO NOTHING`, action)
	require.NoError(e.T, err)
}

// Eventually polls cond every 5ms until it holds or 10s pass.
func Eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// RequireStatus checks a response's status, showing the body on failure.
func RequireStatus(t testing.TB, w *httptest.ResponseRecorder, status int) {
	t.Helper()
	require.Equal(t, status, w.Code, "body: %s", w.Body.String())
}

// ResetOutbox deletes every outbox row, so a test's counts see only what
// it did after setting up its fixtures.
func (e *Env) ResetOutbox() {
	e.T.Helper()
	_, err := e.Pool.Exec(context.Background(), `DELETE FROM audit_outbox`)
	require.NoError(e.T, err)
}
