package tickets_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/tickets"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ws = "ws_acme"

type bundle struct {
	env   *apptest.Env
	admin apptest.Member
	agent apptest.Member
}

func setup(t *testing.T) bundle {
	t.Helper()
	env := apptest.New(t)
	b := bundle{
		env:   env,
		admin: env.NewMember(ws, "alice@acme.io", "Alice Liddell", session.RoleAdmin, ""),
		agent: env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, ""),
	}
	env.ResetOutbox()
	return b
}

func (b bundle) ticketCount() int {
	return b.env.Count(`SELECT count(*) FROM tickets WHERE workspace_id = $1`, ws)
}

func TestCreateCommitsTicketAndEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)

	w := b.env.Do(http.MethodPost, "/app/tickets", b.agent.Token,
		map[string]any{"subject": "  Printer on fire ", "priority": "urgent", "assignee_id": b.admin.ID})
	apptest.RequireStatus(t, w, http.StatusCreated)
	got := apptest.JSON(t, w)
	require.Equal(t, "Printer on fire", got["subject"])
	require.Equal(t, "open", got["status"])
	require.Equal(t, b.agent.ID, got["created_by"])

	require.Equal(t, 1, b.ticketCount())
	ev := b.env.OneEvent(tickets.ActionCreate)
	require.Equal(t, b.agent.Actor(), ev.Actor)
	require.Equal(t, "web", ev.Source)
	require.Equal(t, apptest.IP, ev.IP)
	require.Equal(t, "ticket", ev.ResourceType)
	require.Equal(t, "ticket="+got["id"].(string), ev.ResourceIDsFlat)
	require.Equal(t, fmt.Sprintf(`{"assignee_id":"%s","priority":"urgent","status":"open","subject":"Printer on fire"}`, b.admin.ID), ev.Details)
}

func TestCreateRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.env.FailOutbox(tickets.ActionCreate)

	w := b.env.Do(http.MethodPost, "/app/tickets", b.agent.Token, map[string]any{"subject": "Printer on fire"})
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 0, b.ticketCount())
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionCreate))
}

func TestUpdateCommitsWithChanges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.env.NewTicket(b.agent.Token, "Printer on fire")

	w := b.env.Do(http.MethodPatch, "/app/tickets/"+id, b.agent.Token,
		map[string]any{"status": "closed", "subject": "Printer on fire", "assignee_id": b.agent.ID})
	apptest.RequireStatus(t, w, http.StatusOK)
	got := apptest.JSON(t, w)
	require.Equal(t, "closed", got["status"])
	require.NotNil(t, got["closed_at"])

	ev := b.env.OneEvent(tickets.ActionUpdate)
	require.Equal(t, b.agent.Actor(), ev.Actor)
	require.Equal(t, fmt.Sprintf(`{"changes":{"assignee_id":{"from":null,"to":"%s"},"status":{"from":"open","to":"closed"}}}`, b.agent.ID), ev.Details)

	// Unassigning with null, and a no-op, which records nothing.
	apptest.RequireStatus(t, b.env.Do(http.MethodPatch, "/app/tickets/"+id, b.agent.Token, `{"assignee_id": null}`), http.StatusOK)
	apptest.RequireStatus(t, b.env.Do(http.MethodPatch, "/app/tickets/"+id, b.agent.Token, `{"status": "closed"}`), http.StatusOK)
	evs := b.env.Events(tickets.ActionUpdate)
	require.Len(t, evs, 2)
	require.Equal(t, fmt.Sprintf(`{"changes":{"assignee_id":{"from":"%s","to":null}}}`, b.agent.ID), evs[1].Details)
}

func TestUpdateRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.env.NewTicket(b.agent.Token, "Printer on fire")
	b.env.FailOutbox(tickets.ActionUpdate)

	w := b.env.Do(http.MethodPatch, "/app/tickets/"+id, b.agent.Token, map[string]any{"status": "pending"})
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 1, b.env.Count(`SELECT count(*) FROM tickets WHERE id = $1 AND status = 'open'`, id))
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionUpdate))
}

func TestCloseCommitsWithEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.env.NewTicket(b.agent.Token, "Printer on fire")

	w := b.env.Do(http.MethodPost, "/app/tickets/"+id+"/close", b.agent.Token, nil)
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, true, apptest.JSON(t, w)["changed"])
	require.Equal(t, 1, b.env.Count(`SELECT count(*) FROM tickets WHERE id = $1 AND status = 'closed' AND closed_at IS NOT NULL`, id))
	ev := b.env.OneEvent(tickets.ActionClose)
	require.Equal(t, b.agent.Actor(), ev.Actor)
	require.Equal(t, "web", ev.Source)
	require.Equal(t, `{"changes":{"status":{"from":"open","to":"closed"}}}`, ev.Details)

	// Closing a closed ticket changes and records nothing.
	w = b.env.Do(http.MethodPost, "/app/tickets/"+id+"/close", b.agent.Token, nil)
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, false, apptest.JSON(t, w)["changed"])
	require.Equal(t, 1, b.env.OutboxCount(tickets.ActionClose))
}

func TestCloseRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.env.NewTicket(b.agent.Token, "Printer on fire")
	b.env.FailOutbox(tickets.ActionClose)

	w := b.env.Do(http.MethodPost, "/app/tickets/"+id+"/close", b.agent.Token, nil)
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 1, b.env.Count(`SELECT count(*) FROM tickets WHERE id = $1 AND status = 'open' AND closed_at IS NULL`, id))
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionClose))
}

// importBody is n tickets as a JSON array; bad, when not nil, replaces the
// ticket at index bad.
func importBody(t *testing.T, n int, at int, bad map[string]any) []byte {
	t.Helper()
	list := make([]map[string]any, n)
	for i := range list {
		list[i] = map[string]any{"subject": fmt.Sprintf("Imported %d", i), "external_ref": fmt.Sprintf("zd-%d", i)}
		if i%3 == 0 {
			list[i]["status"] = "closed"
		}
	}
	if bad != nil {
		list[at] = bad
	}
	raw, err := json.Marshal(list)
	require.NoError(t, err)
	return raw
}

func TestImportTenThousandInOneRequest(t *testing.T) {
	t.Parallel()
	b := setup(t)

	w := b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, importBody(t, 10000, 0, nil),
		apptest.HeaderRequestID, "req_import")
	apptest.RequireStatus(t, w, http.StatusCreated)
	got := apptest.JSON(t, w)
	require.EqualValues(t, 10000, got["imported"])
	require.Len(t, got["ids"], 10000)

	require.Equal(t, 10000, b.ticketCount())
	require.Equal(t, 3334, b.env.Count(`SELECT count(*) FROM tickets WHERE status = 'closed' AND closed_at IS NOT NULL`))
	require.Equal(t, 10000, b.env.OutboxCount(tickets.ActionImport))
	require.Equal(t, 10000, b.env.Count(`SELECT count(*) FROM audit_outbox
		WHERE action = 'ticket.import' AND source = 'import' AND actor_type = 'user' AND actor_id = $1
		  AND actor_email = 'alice@acme.io' AND host(ip) = $2 AND request_id = 'req_import'`, b.admin.ID, apptest.IP))
	// Each event names its own ticket.
	require.Equal(t, 10000, b.env.Count(`SELECT count(*) FROM audit_outbox o JOIN tickets t
		ON o.resource_ids_flat = 'ticket=' || t.id::text WHERE o.action = 'ticket.import'`))
	evs := b.env.Events(tickets.ActionImport)
	require.Equal(t, got["import_id"], evs[5000].DetailsMap["import_id"])
	require.EqualValues(t, 5000, evs[5000].DetailsMap["index"])
	require.Equal(t, "zd-5000", evs[5000].DetailsMap["external_ref"])

	// Importing the same external refs again is refused whole.
	w = b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, importBody(t, 2, 0, nil))
	apptest.RequireError(t, w, http.StatusConflict, "[0].external_ref")
	require.Equal(t, 10000, b.ticketCount())
}

func TestImportRefusesWholeBatchOnBadTicket(t *testing.T) {
	t.Parallel()
	b := setup(t)

	cases := []struct {
		name  string
		bad   map[string]any
		field string
	}{
		{"empty subject", map[string]any{"subject": "  "}, "[5000].subject"},
		{"long subject", map[string]any{"subject": strings.Repeat("x", 501)}, "[5000].subject"},
		{"bad status", map[string]any{"subject": "x", "status": "done"}, "[5000].status"},
		{"bad priority", map[string]any{"subject": "x", "priority": 9}, "[5000].priority"},
		{"unknown field", map[string]any{"subject": "x", "owner": "me"}, "[5000].owner"},
		{"duplicate ref", map[string]any{"subject": "x", "external_ref": "zd-17"}, "[5000].external_ref"},
	}
	for _, tc := range cases {
		w := b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, importBody(t, 10000, 5000, tc.bad))
		apptest.RequireError(t, w, http.StatusBadRequest, tc.field)
	}
	require.Equal(t, 0, b.ticketCount())
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionImport))
}

func TestImportRollsBackWhenEventsFail(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.env.FailOutbox(tickets.ActionImport)

	w := b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, importBody(t, 100, 0, nil))
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 0, b.ticketCount())
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionImport))
}

func TestImportLimits(t *testing.T) {
	t.Parallel()
	b := setup(t)

	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, importBody(t, 10001, 0, nil)),
		http.StatusRequestEntityTooLarge, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, `[]`), 400, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, `{"subject":"x"}`), 400, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, `[{"subject":"x"}] []`), 400, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, `[{"subject":"x"}, 7]`), 400, "[1]")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.admin.Token, `[{"subject":"x"}`), 400, "")
	// Admins only.
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/import", b.agent.Token, `[{"subject":"x"}]`), 403, "")
	require.Equal(t, 0, b.ticketCount())
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionImport))
}

func TestBadInputAndIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.env.NewTicket(b.agent.Token, "Printer on fire")
	eve := b.env.NewMember("ws_other", "eve@other.io", "Eve", session.RoleOwner, "")
	viewer := b.env.NewMember(ws, "vic@acme.io", "Vic", session.RoleViewer, "")
	b.env.ResetOutbox()

	cases := []struct {
		method, path string
		body         any
		status       int
		field        string
	}{
		{http.MethodPost, "/app/tickets", map[string]any{}, 400, "subject"},
		{http.MethodPost, "/app/tickets", map[string]any{"subject": "x", "priority": "meh"}, 400, "priority"},
		{http.MethodPost, "/app/tickets", map[string]any{"subject": "x", "assignee_id": "bob"}, 400, "assignee_id"},
		{http.MethodPost, "/app/tickets", map[string]any{"subject": "x", "assignee_id": eve.ID}, 400, "assignee_id"},
		{http.MethodPost, "/app/tickets", map[string]any{"subject": "x", "body": strings.Repeat("b", 65537)}, 400, "body"},
		{http.MethodPatch, "/app/tickets/" + id, map[string]any{"status": "done"}, 400, "status"},
		{http.MethodPatch, "/app/tickets/" + id, map[string]any{"assignee_id": 5}, 400, "assignee_id"},
		{http.MethodPatch, "/app/tickets/" + id, map[string]any{"subject": ""}, 400, "subject"},
		{http.MethodPatch, "/app/tickets/not-a-uuid", map[string]any{"status": "open"}, 400, "id"},
		{http.MethodPatch, "/app/tickets/00000000-0000-0000-0000-000000000000", map[string]any{"status": "open"}, 404, ""},
		{http.MethodPost, "/app/tickets/00000000-0000-0000-0000-000000000000/close", nil, 404, ""},
	}
	for _, tc := range cases {
		apptest.RequireError(t, b.env.Do(tc.method, tc.path, b.agent.Token, tc.body), tc.status, tc.field)
	}
	// Another workspace cannot see or touch the ticket; a viewer cannot change it.
	apptest.RequireError(t, b.env.Do(http.MethodGet, "/app/tickets/"+id, eve.Token, nil), 404, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/"+id+"/close", eve.Token, nil), 404, "")
	apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/tickets/"+id+"/close", viewer.Token, nil), 403, "")
	apptest.RequireStatus(t, b.env.Do(http.MethodGet, "/app/tickets/"+id, viewer.Token, nil), http.StatusOK)

	require.Equal(t, 1, b.env.Count(`SELECT count(*) FROM tickets WHERE id = $1 AND status = 'open'`, id))
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM audit_outbox`))
}

// BenchmarkImport10000 measures one POST /app/tickets/import of 10,000
// tickets: decode, validate, COPY tickets and RecordBatch their events.
func BenchmarkImport10000(b *testing.B) {
	env := apptest.New(b)
	admin := env.NewMember(ws, "alice@acme.io", "Alice", session.RoleAdmin, "")
	list := make([]map[string]any, 10000)
	for i := range list {
		list[i] = map[string]any{"subject": fmt.Sprintf("Imported %d", i), "body": "Customer reports the printer is on fire."}
	}
	body, err := json.Marshal(list)
	require.NoError(b, err)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		w := env.Do(http.MethodPost, "/app/tickets/import", admin.Token, body)
		if w.Code != http.StatusCreated {
			b.Fatalf("status %d: %s", w.Code, w.Body.String())
		}
	}
	b.ReportMetric(float64(10000*b.N)/b.Elapsed().Seconds(), "tickets/s")
}
