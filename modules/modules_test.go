package modules_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/modules"
	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/session"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := modules.New(nil, slog.Default(), modules.Config{})
	require.ErrorContains(t, err, "pool")
}

// TestMountWithoutSlack: every /app route is mounted behind the member
// token; without a signing secret the Slack endpoint does not exist; the
// runner starts and stops.
func TestMountWithoutSlack(t *testing.T) {
	t.Parallel()
	gin.SetMode(gin.TestMode)
	pool := testdb.New(t)
	mods, err := modules.New(pool, slog.New(slog.NewTextHandler(io.Discard, nil)), modules.Config{})
	require.NoError(t, err)
	require.Nil(t, mods.Slack)
	engine := gin.New()
	mods.Register(engine.Group(""))
	require.NoError(t, mods.Start(context.Background()))
	defer mods.Stop()

	routes := map[string]bool{}
	for _, r := range engine.Routes() {
		routes[r.Method+" "+r.Path] = true
	}
	for _, want := range []string{
		"GET /app/members", "POST /app/members", "DELETE /app/members/:id", "PATCH /app/members/:id/role",
		"POST /app/tickets", "POST /app/tickets/import", "GET /app/tickets/:id", "PATCH /app/tickets/:id",
		"POST /app/tickets/:id/close", "POST /app/automations", "GET /app/automations/:id",
	} {
		require.True(t, routes[want], want)
	}
	require.False(t, routes["POST /slack/interactions"])

	for route := range routes {
		method, path, _ := strings.Cut(route, " ")
		w := httptest.NewRecorder()
		engine.ServeHTTP(w, httptest.NewRequest(method, strings.ReplaceAll(path, ":id", "x"), nil))
		apptest.RequireError(t, w, http.StatusUnauthorized, "")
	}

	// Without request middleware, events still record: source web, no IP.
	env := &apptest.Env{T: t, Pool: pool, Engine: engine, Modules: mods}
	owner := env.NewMember("ws_acme", "alice@acme.io", "Alice", session.RoleOwner, "")
	apptest.RequireStatus(t, env.Do(http.MethodPost, "/app/tickets", owner.Token, map[string]any{"subject": "x"}), http.StatusCreated)
	ev := env.OneEvent("ticket.create")
	require.Equal(t, "web", ev.Source)
	require.Empty(t, ev.IP)
}
