package modules_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/modules"
	"github.com/auditlog/auditlog/modules/automations"
	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/slack"
	"github.com/auditlog/auditlog/modules/tickets"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	_, err := modules.New(nil, slog.Default(), modules.Config{})
	require.ErrorContains(t, err, "pool")
	_, err = modules.New(testdb.New(t), nil, modules.Config{})
	require.EqualError(t, err, "modules: logger is nil")
}

// TestNewChecksOptions: an option out of its range is refused, naming it
// and its range.
func TestNewChecksOptions(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for want, cfg := range map[string]modules.Config{
		"tickets: MaxImport must be 1-100000, got 100001":             {Tickets: tickets.Options{MaxImport: 100001}},
		"tickets: MaxImportBytes must be 1 KiB-1 GiB, got 1023":       {Tickets: tickets.Options{MaxImportBytes: 1023}},
		"automations: MaxAttempts must be 1-100, got -1":              {Automations: automations.Options{MaxAttempts: -1}},
		"automations: MaxDelay must be 1s-1 year, got 8785h0m0s":      {Automations: automations.Options{MaxDelay: 8785 * time.Hour}},
		"automations: PollInterval must be 1ms-1h, got 1µs":           {Runner: automations.RunnerOptions{PollInterval: time.Microsecond}},
		"automations: AttemptTimeout must be 1ms-1h, got 2h0m0s":      {Runner: automations.RunnerOptions{AttemptTimeout: 2 * time.Hour}},
		"automations: BackoffBase must be 1ms-24h, got -1s":           {Runner: automations.RunnerOptions{BackoffBase: -time.Second}},
		"automations: Lease (1m0s) must exceed AttemptTimeout (1m0s)": {Runner: automations.RunnerOptions{Lease: time.Minute}},
	} {
		_, err := modules.New(pool, logger, cfg)
		require.EqualError(t, err, want)
	}
	_, err := slack.New(pool, logger, slack.Options{SigningSecret: "s", MaxBodyBytes: 16<<20 + 1})
	require.EqualError(t, err, "slack: MaxBodyBytes must be 1 KiB-16 MiB, got 16777217")
	_, err = slack.New(pool, logger, slack.Options{})
	require.EqualError(t, err, "slack: SigningSecret is required")
	_, err = session.New(pool, nil)
	require.EqualError(t, err, "session: logger is nil")
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
	env.NewTicket(owner.Token, "x")
	ev := env.OneEvent("ticket.create")
	require.Equal(t, "web", ev.Source)
	require.Empty(t, ev.IP)
}
