package slack_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/slack"
	"github.com/auditlog/auditlog/modules/tickets"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ws = "ws_acme"

type bundle struct {
	env    *apptest.Env
	bob    apptest.Member
	ticket string
}

// setup makes a workspace with Bob, an agent linked to Slack user U0BOB,
// and one open ticket.
func setup(t *testing.T) bundle {
	t.Helper()
	env := apptest.New(t)
	bob := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "U0BOB")
	ticket := env.NewTicket(bob.Token, "Printer on fire")
	env.ResetOutbox()
	return bundle{env: env, bob: bob, ticket: ticket}
}

// interaction is a form body as Slack sends for a button click.
func interaction(t *testing.T, slackUser, actionID, value string) []byte {
	t.Helper()
	payload, err := json.Marshal(map[string]any{
		"type":       "block_actions",
		"team":       map[string]any{"id": "T0ACME"},
		"user":       map[string]any{"id": slackUser, "team_id": "T0ACME"},
		"actions":    []map[string]any{{"action_id": actionID, "value": value, "type": "button"}},
		"trigger_id": "13345224609.738474920.8088930838d88f008e0",
	})
	require.NoError(t, err)
	return []byte(url.Values{"payload": {string(payload)}}.Encode())
}

// post sends body to /slack/interactions signed with secret at ts.
func (b bundle) post(body []byte, secret string, ts time.Time) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/slack/interactions", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "Slackbot 1.0 (+https://api.slack.com/robots)")
	stamp := strconv.FormatInt(ts.Unix(), 10)
	req.Header.Set(slack.HeaderTimestamp, stamp)
	req.Header.Set(slack.HeaderSignature, slack.Sign([]byte(secret), stamp, body))
	req.Header.Set(apptest.HeaderRequestID, "req_slack")
	w := httptest.NewRecorder()
	b.env.Engine.ServeHTTP(w, req)
	return w
}

func (b bundle) requireNothingStored(t *testing.T) {
	t.Helper()
	require.Equal(t, "open", b.env.TicketStatus(b.ticket))
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM audit_outbox`))
}

func TestCloseFromSlackRecordsSlackSourceAndNoIP(t *testing.T) {
	t.Parallel()
	b := setup(t)

	w := b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, b.ticket), apptest.SlackSecret, time.Now())
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, true, apptest.JSON(t, w)["changed"])
	require.Equal(t, "closed", b.env.TicketStatus(b.ticket))

	ev := b.env.OneEvent(tickets.ActionClose)
	require.Equal(t, b.bob.Actor(), ev.Actor, "the Slack user's member acted")
	require.Equal(t, ws, ev.WorkspaceID)
	require.Equal(t, slack.SourceSlack, ev.Source)
	// The request middleware saw Slack's server (apptest.IP) and its user
	// agent: neither is the member's, so neither is recorded.
	require.Empty(t, ev.IP)
	require.Empty(t, ev.UserAgent)
	require.Equal(t, "req_slack", ev.RequestID)
	require.Equal(t, "ticket="+b.ticket, ev.ResourceIDsFlat)
	require.Equal(t, `{"changes":{"status":{"from":"open","to":"closed"}},"slack_team_id":"T0ACME","slack_user_id":"U0BOB"}`, ev.Details)

	// Slack retries a request it thinks failed: the second close is a no-op.
	w = b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, b.ticket), apptest.SlackSecret, time.Now())
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, false, apptest.JSON(t, w)["changed"])
	require.Equal(t, 1, b.env.OutboxCount(tickets.ActionClose))
}

func TestCloseFromSlackRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.env.FailOutbox(tickets.ActionClose)

	w := b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, b.ticket), apptest.SlackSecret, time.Now())
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	b.requireNothingStored(t)
}

func TestRefusedSlackRequestsStoreNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	viewer := b.env.NewMember(ws, "vic@acme.io", "Vic", session.RoleViewer, "U0VIC")
	b.env.ResetOutbox()
	good := interaction(t, "U0BOB", slack.ActionCloseTicket, b.ticket)

	// Signature and replay checks: 401.
	apptest.RequireError(t, b.post(good, "not-the-secret", time.Now()), http.StatusUnauthorized, "")
	apptest.RequireError(t, b.post(good, apptest.SlackSecret, time.Now().Add(-6*time.Minute)), http.StatusUnauthorized, "")
	apptest.RequireError(t, b.post(good, apptest.SlackSecret, time.Now().Add(6*time.Minute)), http.StatusUnauthorized, "")
	req := httptest.NewRequest(http.MethodPost, "/slack/interactions", strings.NewReader(string(good)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	b.env.Engine.ServeHTTP(w, req)
	apptest.RequireError(t, w, http.StatusUnauthorized, "")

	// Who: an unknown Slack user or one whose member may not close tickets: 403.
	apptest.RequireError(t, b.post(interaction(t, "U0NOBODY", slack.ActionCloseTicket, b.ticket), apptest.SlackSecret, time.Now()),
		http.StatusForbidden, "")
	apptest.RequireError(t, b.post(interaction(t, "U0VIC", slack.ActionCloseTicket, b.ticket), apptest.SlackSecret, time.Now()),
		http.StatusForbidden, "")
	require.Equal(t, session.RoleViewer, viewer.Role)

	// What: bad input is 400, an unknown ticket 404, never 500.
	apptest.RequireError(t, b.post(interaction(t, "U0BOB", "delete_ticket", b.ticket), apptest.SlackSecret, time.Now()),
		http.StatusBadRequest, "payload.actions[0].action_id")
	apptest.RequireError(t, b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, "t_1"), apptest.SlackSecret, time.Now()),
		http.StatusBadRequest, "payload.actions[0].value")
	apptest.RequireError(t, b.post([]byte("payload=%7Bnot-json"), apptest.SlackSecret, time.Now()),
		http.StatusBadRequest, "payload")
	apptest.RequireError(t, b.post([]byte("nothing=here"), apptest.SlackSecret, time.Now()),
		http.StatusBadRequest, "payload")
	apptest.RequireError(t, b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, "00000000-0000-0000-0000-000000000000"),
		apptest.SlackSecret, time.Now()), http.StatusNotFound, "")

	// A ticket of another workspace is not found for this member.
	eve := b.env.NewMember("ws_other", "eve@other.io", "Eve", session.RoleOwner, "")
	theirs := b.env.NewTicket(eve.Token, "Theirs")
	b.env.ResetOutbox()
	apptest.RequireError(t, b.post(interaction(t, "U0BOB", slack.ActionCloseTicket, theirs),
		apptest.SlackSecret, time.Now()), http.StatusNotFound, "")

	// Wrong content type: 415.
	req = httptest.NewRequest(http.MethodPost, "/slack/interactions", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	w = httptest.NewRecorder()
	b.env.Engine.ServeHTTP(w, req)
	apptest.RequireError(t, w, http.StatusUnsupportedMediaType, "")

	b.requireNothingStored(t)
}
