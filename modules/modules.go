// Package modules builds the in-app helpdesk: members, tickets, automations
// and Slack interactions, each owning its tables and routes and recording
// its audit events with outbox.Record in the transaction of its change.
//
// Wiring (in the HTTP server):
//
//	mods, err := modules.New(pool, logger, modules.Config{SlackSigningSecret: cfg.Slack.SigningSecret})
//	...
//	web := engine.Group("", clientip.RequestContext(resolver, "web"))
//	mods.Register(web)      // /app/... (member token) and /slack/interactions
//	mods.Start(ctx)         // the automation runner
//	defer mods.Stop()
//
// The routes expect outbox.RequestInfo (source, client IP, user agent,
// request id) on the request context from the request middleware; without
// it events get source "web" and no IP, user agent or request id.
package modules

import (
	"context"
	"log/slog"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/modules/automations"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/members"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/slack"
	"github.com/auditlog/auditlog/modules/tickets"
)

// Config configures the modules. Zero values take each module's defaults.
type Config struct {
	// SlackSigningSecret is the Slack app's signing secret; empty disables
	// POST /slack/interactions. Meant to come from the config key
	// slack.signing_secret (AUDITLOG_SLACK_SIGNING_SECRET). Default: "".
	SlackSigningSecret string
	// Tickets configures imports (see tickets.Options).
	Tickets tickets.Options
	// Automations configures scheduling (see automations.Options).
	Automations automations.Options
	// Runner configures the automation job runner (see
	// automations.RunnerOptions).
	Runner automations.RunnerOptions
}

// Modules is the built helpdesk.
type Modules struct {
	Session     *session.Auth
	Members     *members.Module
	Tickets     *tickets.Module
	Automations *automations.Module
	// Slack is nil when no signing secret is configured.
	Slack *slack.Module
	// Runner runs due automation jobs; Start and Stop drive it.
	Runner *automations.Runner
}

// New builds every module over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger, cfg Config) (*Modules, error) {
	if err := web.CheckDeps("modules", pool, logger); err != nil {
		return nil, err
	}
	var m Modules
	var err error
	if m.Session, err = session.New(pool, logger); err != nil {
		return nil, err
	}
	if m.Members, err = members.New(pool, logger); err != nil {
		return nil, err
	}
	if m.Tickets, err = tickets.New(pool, logger, cfg.Tickets); err != nil {
		return nil, err
	}
	if m.Automations, err = automations.New(pool, logger, cfg.Automations); err != nil {
		return nil, err
	}
	if m.Runner, err = automations.NewRunner(pool, logger, cfg.Runner); err != nil {
		return nil, err
	}
	if cfg.SlackSigningSecret != "" {
		if m.Slack, err = slack.New(pool, logger, slack.Options{SigningSecret: cfg.SlackSigningSecret}); err != nil {
			return nil, err
		}
	} else {
		logger.Info("slack interactions disabled: no signing secret configured")
	}
	return &m, nil
}

// Register mounts /app/... behind the member-token middleware and, when
// enabled, /slack/interactions (authenticated by Slack's signature) on r.
func (m *Modules) Register(r *gin.RouterGroup) {
	app := r.Group("/app", m.Session.Middleware())
	m.Members.Register(app)
	m.Tickets.Register(app)
	m.Automations.Register(app)
	if m.Slack != nil {
		m.Slack.Register(r)
	}
}

// Start starts the background automation runner until Stop or ctx ends.
func (m *Modules) Start(ctx context.Context) error { return m.Runner.Start(ctx) }

// Stop stops the automation runner, waiting for an attempt in progress.
func (m *Modules) Stop() { m.Runner.Stop() }
