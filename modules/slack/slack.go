// Package slack serves Slack's interactivity endpoint, POST
// /slack/interactions, so members can act on tickets from Slack buttons.
//
// Every request is verified with Slack's v0 request signature (HMAC-SHA256
// of "v0:{timestamp}:{body}" under the app's signing secret, compared in
// constant time) and refused when its timestamp is more than five minutes
// off, so a captured request cannot be replayed. The Slack user is mapped to
// a member through members.slack_user_id; the action runs as that member,
// and its event is recorded with source "slack" and no IP: the request comes
// from Slack's servers, whose address says nothing about the member.
//
// Supported: block_actions with action_id "close_ticket" and the ticket id
// as the button's value.
package slack

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/modules/internal/option"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/tickets"
	"github.com/auditlog/auditlog/outbox"
)

// SourceSlack is the source of the events of Slack interactions.
const SourceSlack = "slack"

// ActionCloseTicket is the action_id of a "close ticket" button.
const ActionCloseTicket = "close_ticket"

// Options configure the Slack module.
type Options struct {
	// SigningSecret is the Slack app's signing secret (Basic Information →
	// App Credentials). Required.
	SigningSecret string
	// MaxBodyBytes bounds a request body (1 KiB–16 MiB). Default: 1 MiB.
	MaxBodyBytes int64
	// Now is the clock for the timestamp check. Default: time.Now.
	Now func() time.Time
}

// MaxBodyBytesDefault is the default of Options.MaxBodyBytes.
const MaxBodyBytesDefault = 1 << 20

// Module serves POST /slack/interactions.
type Module struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	secret []byte
	opts   Options
}

// New returns the Slack module over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger, opts Options) (*Module, error) {
	if err := web.CheckDeps("slack", pool, logger); err != nil {
		return nil, err
	}
	if opts.SigningSecret == "" {
		return nil, errors.New("slack: SigningSecret is required")
	}
	if err := option.Bounded(&opts.MaxBodyBytes, MaxBodyBytesDefault, 1024, 16<<20, "slack: MaxBodyBytes", "1 KiB-16 MiB"); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Module{
		pool: pool, logger: logger.With(slog.String("module", "slack")),
		secret: []byte(opts.SigningSecret), opts: opts,
	}, nil
}

// Register mounts POST /slack/interactions on r. It authenticates by
// signature, so r must not require a member token.
func (m *Module) Register(r *gin.RouterGroup) {
	r.POST("/slack/interactions", m.interactions)
}

// Interaction is the part of a Slack interaction payload this module reads.
type Interaction struct {
	Type string `json:"type"`
	User struct {
		ID     string `json:"id"`
		TeamID string `json:"team_id"`
	} `json:"user"`
	Team struct {
		ID string `json:"id"`
	} `json:"team"`
	Actions []struct {
		ActionID string `json:"action_id"`
		Value    string `json:"value"`
	} `json:"actions"`
}

// slackIDRe is the shape of Slack user and team ids.
var slackIDRe = regexp.MustCompile(`^[A-Z0-9]{2,32}$`)

// ParseInteraction reads a form-encoded interaction body (payload=<JSON>)
// and checks it is a block_actions interaction with one action by a user.
// Errors name the offending field.
func ParseInteraction(body []byte) (Interaction, *web.Error) {
	var in Interaction
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return in, web.InvalidError("", "the body must be form-encoded")
	}
	payload := form.Get("payload")
	if payload == "" {
		return in, web.InvalidError("payload", "is required")
	}
	if err := json.Unmarshal([]byte(payload), &in); err != nil {
		return in, web.InvalidError("payload", "must be a Slack interaction JSON object")
	}
	if in.Type != "block_actions" {
		return in, web.InvalidError("payload.type", "only block_actions interactions are supported")
	}
	if !slackIDRe.MatchString(in.User.ID) {
		return in, web.InvalidError("payload.user.id", "must be a Slack user id")
	}
	if len(in.Actions) != 1 {
		return in, web.InvalidError("payload.actions", "must hold exactly one action")
	}
	return in, nil
}

func (m *Module) interactions(c *gin.Context) {
	if mt, _, err := mime.ParseMediaType(c.GetHeader("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		httperr.Abort(c, http.StatusUnsupportedMediaType, httperr.CodeUnsupportedMedia,
			"the body must be application/x-www-form-urlencoded", "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, m.opts.MaxBodyBytes))
	if err != nil {
		web.AbortDecode(c, err, "")
		return
	}
	if err := Verify(m.secret, c.Request.Header, body, m.opts.Now()); err != nil {
		m.logger.WarnContext(c.Request.Context(), "slack request refused", slog.String("reason", err.Error()))
		httperr.Abort(c, http.StatusUnauthorized, httperr.CodeUnauthenticated, err.Error(), "")
		return
	}
	in, verr := ParseInteraction(body)
	if verr != nil {
		web.Abort(c, m.logger, "", verr)
		return
	}
	act := in.Actions[0]
	if act.ActionID != ActionCloseTicket {
		web.Invalid(c, "payload.actions[0].action_id", "unknown action; supported: close_ticket")
		return
	}
	ticketID, verr := web.UUID("payload.actions[0].value", act.Value, "must be a ticket id (UUID)")
	if verr != nil {
		web.Abort(c, m.logger, "", verr)
		return
	}

	ctx := c.Request.Context()
	member, err := session.BySlackUser(ctx, m.pool, in.User.ID)
	if errors.Is(err, session.ErrNotFound) {
		web.Forbidden(c, "this Slack user is not linked to a member")
		return
	}
	if err != nil {
		web.Fail(c, m.logger, "looking up the Slack user", err)
		return
	}
	if !member.Role.AtLeast(session.RoleAgent) {
		web.Forbidden(c, "closing tickets needs the agent role or higher")
		return
	}

	// The request came through Slack's servers: the event names the member,
	// with source slack and neither Slack's IP nor its user agent. The
	// request id is kept to trace the request.
	orig, _ := outbox.RequestInfoFrom(ctx)
	ctx = outbox.WithActor(ctx, member.Actor())
	ctx = outbox.WithRequestInfo(ctx, outbox.RequestInfo{
		WorkspaceID: member.WorkspaceID, Source: SourceSlack, RequestID: orig.RequestID,
	})
	extra := map[string]any{"slack_user_id": in.User.ID}
	if team := in.Team.ID; team != "" && slackIDRe.MatchString(team) {
		extra["slack_team_id"] = team
	}
	var changed bool
	err = outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		var err error
		_, changed, err = tickets.Close(ctx, tx, member.WorkspaceID, ticketID, extra)
		if errors.Is(err, tickets.ErrNotFound) {
			return web.NotFoundError("ticket")
		}
		return err
	})
	if err != nil {
		web.Abort(c, m.logger, "closing a ticket from Slack", err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"ok": true, "ticket_id": ticketID.String(), "changed": changed})
}
