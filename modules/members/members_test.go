package members_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/members"
	"github.com/auditlog/auditlog/modules/session"
)

const ws = "ws_acme"

func setup(t *testing.T) (*apptest.Env, apptest.Member) {
	t.Helper()
	env := apptest.New(t)
	owner := env.NewMember(ws, "Alice@Acme.io", "Alice Liddell", session.RoleOwner, "")
	env.ResetOutbox()
	return env, owner
}

func memberCount(env *apptest.Env, email string) int {
	return env.Count(`SELECT count(*) FROM members WHERE workspace_id = $1 AND email = $2`, ws, email)
}

func TestInviteCommitsMemberAndEvent(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)

	w := env.Do(http.MethodPost, "/app/members", owner.Token,
		map[string]any{"email": " Bob@Acme.io ", "name": "Bob", "role": "agent", "slack_user_id": "U0BOB"},
		apptest.HeaderRequestID, "req_invite")
	apptest.RequireStatus(t, w, http.StatusCreated)
	body := apptest.JSON(t, w)
	member := body["member"].(map[string]any)
	require.Equal(t, "bob@acme.io", member["email"])
	require.Equal(t, "agent", member["role"])
	token := body["token"].(string)
	require.Contains(t, token, session.TokenPrefix)

	require.Equal(t, 1, memberCount(env, "bob@acme.io"))
	ev := env.OneEvent(members.ActionInvite)
	require.Equal(t, ws, ev.WorkspaceID)
	require.Equal(t, owner.Actor(), ev.Actor)
	require.Equal(t, "web", ev.Source)
	require.Equal(t, apptest.IP, ev.IP)
	require.Equal(t, apptest.UserAgent, ev.UserAgent)
	require.Equal(t, "req_invite", ev.RequestID)
	require.Equal(t, "member", ev.ResourceType)
	require.Equal(t, "member="+member["id"].(string), ev.ResourceIDsFlat)
	require.Equal(t, `{"email":"bob@acme.io","name":"Bob","role":"agent","slack_user_id":"U0BOB"}`, ev.Details)

	// The new member's token signs in, and its events name them.
	w = env.Do(http.MethodGet, "/app/members", token, nil)
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Len(t, apptest.JSON(t, w)["data"], 2)
}

func TestInviteRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	env.FailOutbox(members.ActionInvite)

	w := env.Do(http.MethodPost, "/app/members", owner.Token, map[string]any{"email": "bob@acme.io", "role": "agent"})
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 0, memberCount(env, "bob@acme.io"))
	require.Equal(t, 0, env.OutboxCount(members.ActionInvite))
}

func TestInviteRollsBackWhenEventInvalid(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)

	// A broken request middleware hands over an IP that is not one: the
	// event is refused after the member row was written, and both go.
	w := env.Do(http.MethodPost, "/app/members", owner.Token, map[string]any{"email": "bob@acme.io", "role": "agent"},
		apptest.HeaderIP, "not-an-ip")
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 0, memberCount(env, "bob@acme.io"))
	require.Equal(t, 0, env.OutboxCount(members.ActionInvite))
}

func TestRemoveCommitsMemberAndEvent(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	bob := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "")

	w := env.Do(http.MethodDelete, "/app/members/"+bob.ID, owner.Token, nil)
	apptest.RequireStatus(t, w, http.StatusNoContent)
	require.Equal(t, 0, memberCount(env, "bob@acme.io"))
	ev := env.OneEvent(members.ActionRemove)
	require.Equal(t, owner.Actor(), ev.Actor)
	require.Equal(t, "member="+bob.ID, ev.ResourceIDsFlat)
	require.Equal(t, `{"email":"bob@acme.io","name":"Bob","role":"agent"}`, ev.Details)

	// The removed member's token no longer works.
	apptest.RequireError(t, env.Do(http.MethodGet, "/app/members", bob.Token, nil), http.StatusUnauthorized, "")
}

func TestRemoveRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	bob := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "")
	env.FailOutbox(members.ActionRemove)

	w := env.Do(http.MethodDelete, "/app/members/"+bob.ID, owner.Token, nil)
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 1, memberCount(env, "bob@acme.io"))
	require.Equal(t, 0, env.OutboxCount(members.ActionRemove))
}

func TestRoleChangeCommitsWithEvent(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	bob := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "")

	w := env.Do(http.MethodPatch, "/app/members/"+bob.ID+"/role", owner.Token, map[string]any{"role": "admin"})
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, 1, env.Count(`SELECT count(*) FROM members WHERE id = $1 AND role = 'admin'`, bob.ID))
	ev := env.OneEvent(members.ActionRoleChange)
	require.Equal(t, owner.Actor(), ev.Actor)
	require.Equal(t, `{"changes":{"role":{"from":"agent","to":"admin"}},"email":"bob@acme.io"}`, ev.Details)

	// The same role again changes nothing and records nothing.
	w = env.Do(http.MethodPatch, "/app/members/"+bob.ID+"/role", owner.Token, map[string]any{"role": "admin"})
	apptest.RequireStatus(t, w, http.StatusOK)
	require.Equal(t, false, apptest.JSON(t, w)["changed"])
	require.Equal(t, 1, env.OutboxCount(members.ActionRoleChange))
}

func TestRoleChangeRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	bob := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "")
	env.FailOutbox(members.ActionRoleChange)

	w := env.Do(http.MethodPatch, "/app/members/"+bob.ID+"/role", owner.Token, map[string]any{"role": "admin"})
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 1, env.Count(`SELECT count(*) FROM members WHERE id = $1 AND role = 'agent'`, bob.ID))
	require.Equal(t, 0, env.OutboxCount(members.ActionRoleChange))
}

func TestWorkspaceKeepsAnOwner(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)

	apptest.RequireError(t, env.Do(http.MethodPatch, "/app/members/"+owner.ID+"/role", owner.Token,
		map[string]any{"role": "admin"}), http.StatusConflict, "role")
	apptest.RequireError(t, env.Do(http.MethodDelete, "/app/members/"+owner.ID, owner.Token, nil),
		http.StatusConflict, "")

	// With a second owner, the first may step down.
	env.NewMember(ws, "carol@acme.io", "Carol", session.RoleOwner, "")
	apptest.RequireStatus(t, env.Do(http.MethodPatch, "/app/members/"+owner.ID+"/role", owner.Token,
		map[string]any{"role": "admin"}), http.StatusOK)
}

func TestPermissions(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	admin := env.NewMember(ws, "adam@acme.io", "Adam", session.RoleAdmin, "")
	agent := env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "")

	apptest.RequireError(t, env.Do(http.MethodPost, "/app/members", agent.Token,
		map[string]any{"email": "x@acme.io", "role": "viewer"}), http.StatusForbidden, "")
	apptest.RequireError(t, env.Do(http.MethodPost, "/app/members", admin.Token,
		map[string]any{"email": "x@acme.io", "role": "owner"}), http.StatusForbidden, "")
	apptest.RequireError(t, env.Do(http.MethodDelete, "/app/members/"+owner.ID, admin.Token, nil),
		http.StatusForbidden, "")
	apptest.RequireError(t, env.Do(http.MethodPatch, "/app/members/"+owner.ID+"/role", admin.Token,
		map[string]any{"role": "admin"}), http.StatusForbidden, "")
	require.Equal(t, 2, env.OutboxCount(members.ActionInvite), "only the fixtures' invites")
	require.Equal(t, 0, env.OutboxCount(members.ActionRemove)+env.OutboxCount(members.ActionRoleChange))
}

func TestWorkspaceIsolation(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	other := env.NewMember("ws_other", "eve@other.io", "Eve", session.RoleOwner, "")

	apptest.RequireError(t, env.Do(http.MethodDelete, "/app/members/"+owner.ID, other.Token, nil),
		http.StatusNotFound, "")
	apptest.RequireError(t, env.Do(http.MethodPatch, "/app/members/"+owner.ID+"/role", other.Token,
		map[string]any{"role": "viewer"}), http.StatusNotFound, "")
	require.Equal(t, 1, memberCount(env, "alice@acme.io"))
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	env, owner := setup(t)
	env.NewMember(ws, "bob@acme.io", "Bob", session.RoleAgent, "U0BOB")

	cases := []struct {
		name   string
		body   any
		status int
		field  string
	}{
		{"no email", map[string]any{"role": "agent"}, 400, "email"},
		{"bad email", map[string]any{"email": "a@b@c", "role": "agent"}, 400, "email"},
		{"bad role", map[string]any{"email": "x@acme.io", "role": "god"}, 400, "role"},
		{"unknown field", map[string]any{"email": "x@acme.io", "role": "agent", "admin": true}, 400, "admin"},
		{"wrong type", map[string]any{"email": 7, "role": "agent"}, 400, "email"},
		{"nul in name", map[string]any{"email": "x@acme.io", "role": "agent", "name": "a\x00b"}, 400, "name"},
		{"bad slack id", map[string]any{"email": "x@acme.io", "role": "agent", "slack_user_id": "bob"}, 400, "slack_user_id"},
		{"malformed", `{"email":`, 400, ""},
		{"two values", `{} {}`, 400, ""},
		{"array", `[]`, 400, ""},
		{"duplicate email", map[string]any{"email": "BOB@acme.io", "role": "agent"}, 409, "email"},
		{"duplicate slack", map[string]any{"email": "x@acme.io", "role": "agent", "slack_user_id": "U0BOB"}, 409, "slack_user_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			apptest.RequireError(t, env.Do(http.MethodPost, "/app/members", owner.Token, tc.body), tc.status, tc.field)
		})
	}
	apptest.RequireError(t, env.Do(http.MethodDelete, "/app/members/nope", owner.Token, nil), 400, "id")
	apptest.RequireError(t, env.Do(http.MethodPatch, "/app/members/"+owner.ID+"/role", owner.Token, map[string]any{"role": ""}), 400, "role")
	apptest.RequireError(t, env.Do(http.MethodGet, "/app/members", "", nil), 401, "")
	apptest.RequireError(t, env.Do(http.MethodGet, "/app/members", "mem_wrong", nil), 401, "")
	apptest.RequireError(t, env.Do(http.MethodGet, "/app/members", "key_notamember", nil), 401, "")

	w := env.Do(http.MethodPost, "/app/members", owner.Token, nil)
	apptest.RequireError(t, w, http.StatusUnsupportedMediaType, "")
	require.Equal(t, 1, env.OutboxCount(members.ActionInvite), "only the fixture's; no refused invite was recorded")
}
