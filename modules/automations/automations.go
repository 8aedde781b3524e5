// Package automations lets a member schedule an action to happen later on
// their behalf ("close this ticket in two hours"), and runs it.
//
// Scheduling (POST /app/automations) stores the automation, a job and
// outbox.Capture of the request's audit context, and records
// automation.create, in one transaction. The Runner claims due jobs with
// FOR UPDATE SKIP LOCKED and, on every attempt, restores that context, so the
// events an attempt records (ticket.close, automation.attempt_failed,
// automation.failed, automation.skipped) name the member who scheduled it,
// never an anonymous system actor, with source "workflow" and the attempt
// number and automation id in details. A failed attempt rolls back its
// change and event together, records automation.attempt_failed, and is
// retried with exponential backoff until the job's max_attempts.
package automations

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/modules/internal/option"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
)

// Audit actions recorded by this package (besides tickets.ActionClose).
const (
	ActionCreate        = "automation.create"
	ActionAttemptFailed = "automation.attempt_failed"
	ActionFailed        = "automation.failed"
	ActionSkipped       = "automation.skipped"
)

// ActionCloseTicket is the one kind of automation: close a ticket.
const ActionCloseTicket = "close_ticket"

// SourceWorkflow is the source of every event a job records.
const SourceWorkflow = "workflow"

// Options configure the automations module. Zero values take the defaults.
type Options struct {
	// MaxAttempts is how many attempts a new job gets before it fails for
	// good (1–100). Stored on the job, so a later change does not affect
	// jobs already scheduled. Default: 5.
	MaxAttempts int
	// MaxDelay is the longest delay a member may schedule (1s–1 year).
	// Default: 720h (30 days).
	MaxDelay time.Duration
}

// Defaults of Options.
const (
	MaxAttemptsDefault = 5
	MaxDelayDefault    = 30 * 24 * time.Hour
)

// Module serves /app/automations.
type Module struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	opts   Options
}

// New returns the automations module over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger, opts Options) (*Module, error) {
	if err := web.CheckDeps("automations", pool, logger); err != nil {
		return nil, err
	}
	if err := option.Bounded(&opts.MaxAttempts, MaxAttemptsDefault, 1, 100, "automations: MaxAttempts", "1-100"); err != nil {
		return nil, err
	}
	if err := option.Bounded(&opts.MaxDelay, MaxDelayDefault, time.Second, 366*24*time.Hour, "automations: MaxDelay", "1s-1 year"); err != nil {
		return nil, err
	}
	return &Module{pool: pool, logger: logger.With(slog.String("module", "automations")), opts: opts}, nil
}

// Register mounts the routes on r, which must authenticate members with
// session.Auth.Middleware:
//
//	POST /automations       schedule (agent)
//	GET  /automations/:id   read, with the job's state (any member)
func (m *Module) Register(r *gin.RouterGroup) {
	r.POST("/automations", session.Require(session.RoleAgent), m.create)
	r.GET("/automations/:id", session.Require(session.RoleViewer), m.get)
}

const (
	lockTicketSQL       = `SELECT 1 FROM tickets WHERE workspace_id = $1 AND id = $2 FOR KEY SHARE`
	insertAutomationSQL = `
INSERT INTO automations (id, workspace_id, action, ticket_id, created_by, delay_seconds)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING created_at`
	insertJobSQL = `
INSERT INTO automation_jobs (automation_id, workspace_id, audit_context, run_at, max_attempts)
VALUES ($1, $2, $3, now() + $4 * interval '1 second', $5)
RETURNING state, run_at, attempt`
	selectAutomationSQL = `
SELECT a.id, a.action, a.ticket_id, a.created_by, a.delay_seconds, a.created_at,
       j.state, j.run_at, j.attempt, j.max_attempts, j.finished_at
FROM automations a JOIN automation_jobs j ON j.automation_id = a.id
WHERE a.workspace_id = $1 AND a.id = $2`
)

// automationJSON is an automation as the API shows it.
type automationJSON struct {
	ID           string  `json:"id"`
	WorkspaceID  string  `json:"workspace_id"`
	Action       string  `json:"action"`
	TicketID     string  `json:"ticket_id"`
	CreatedBy    string  `json:"created_by"`
	DelaySeconds int     `json:"delay_seconds"`
	CreatedAt    string  `json:"created_at"`
	State        string  `json:"state"`
	RunAt        string  `json:"run_at"`
	Attempt      int     `json:"attempt"`
	MaxAttempts  int     `json:"max_attempts"`
	FinishedAt   *string `json:"finished_at"`
}

type createRequest struct {
	Action       string `json:"action"`
	TicketID     string `json:"ticket_id"`
	DelaySeconds *int64 `json:"delay_seconds"`
}

func (m *Module) create(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	var req createRequest
	if !web.DecodeJSON(c, web.MaxBodyBytesDefault, &req) {
		return
	}
	if req.Action != ActionCloseTicket {
		web.Invalid(c, "action", "must be close_ticket")
		return
	}
	ticketID, verr := web.UUID("ticket_id", req.TicketID, "must be a ticket id (UUID)")
	if verr != nil {
		web.Abort(c, m.logger, "", verr)
		return
	}
	maxDelay := int64(m.opts.MaxDelay / time.Second)
	if req.DelaySeconds == nil || *req.DelaySeconds < 0 || *req.DelaySeconds > maxDelay {
		web.Invalid(c, "delay_seconds", fmt.Sprintf("must be a number of seconds from 0 to %d", maxDelay))
		return
	}
	delay := *req.DelaySeconds
	ctx := c.Request.Context()
	// The job keeps who asked and from where, to act for them on every
	// attempt, however late and after however many restarts.
	audit, err := outbox.Capture(ctx)
	if err != nil {
		web.Fail(c, m.logger, "scheduling an automation", err)
		return
	}
	id, err := uuid.NewV7()
	if err != nil {
		web.Fail(c, m.logger, "scheduling an automation", err)
		return
	}
	// The answer is built from what the inserts return, as GET would read it.
	out := automationJSON{
		ID: id.String(), WorkspaceID: actor.WorkspaceID, Action: req.Action, TicketID: ticketID.String(),
		CreatedBy: actor.ID.String(), DelaySeconds: int(delay), MaxAttempts: m.opts.MaxAttempts,
	}
	var created, runAt time.Time
	err = outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, lockTicketSQL, actor.WorkspaceID, ticketID).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return web.InvalidError("ticket_id", "no such ticket in this workspace")
			}
			return fmt.Errorf("checking ticket: %w", err)
		}
		if err := tx.QueryRow(ctx, insertAutomationSQL, id, actor.WorkspaceID, req.Action, ticketID, actor.ID, delay).Scan(&created); err != nil {
			return fmt.Errorf("inserting automation: %w", err)
		}
		if err := tx.QueryRow(ctx, insertJobSQL, id, actor.WorkspaceID, string(audit), delay, m.opts.MaxAttempts).Scan(&out.State, &runAt, &out.Attempt); err != nil {
			return fmt.Errorf("inserting automation job: %w", err)
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionCreate,
			Resource:    automationResource(id, ticketID),
			Details: map[string]any{
				"automation_id": id.String(),
				"action":        req.Action,
				"ticket_id":     ticketID.String(),
				"delay_seconds": delay,
				"run_at":        outbox.FormatTime(runAt),
				"max_attempts":  m.opts.MaxAttempts,
			},
		})
	})
	if err != nil {
		web.Abort(c, m.logger, "scheduling an automation", err)
		return
	}
	out.CreatedAt, out.RunAt = outbox.FormatTime(created), outbox.FormatTime(runAt)
	c.JSON(http.StatusCreated, out)
}

func (m *Module) get(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	out, err := m.load(c, actor.WorkspaceID, id)
	if errors.Is(err, pgx.ErrNoRows) {
		web.NotFound(c, "automation")
		return
	}
	if err != nil {
		web.Fail(c, m.logger, "reading an automation", err)
		return
	}
	c.JSON(http.StatusOK, out)
}

func (m *Module) load(c *gin.Context, ws string, id uuid.UUID) (automationJSON, error) {
	var a automationJSON
	var aid, ticket, by uuid.UUID
	var created, runAt time.Time
	var finished *time.Time
	err := m.pool.QueryRow(c.Request.Context(), selectAutomationSQL, ws, id).Scan(
		&aid, &a.Action, &ticket, &by, &a.DelaySeconds, &created,
		&a.State, &runAt, &a.Attempt, &a.MaxAttempts, &finished)
	if err != nil {
		return a, err
	}
	a.ID, a.WorkspaceID, a.TicketID, a.CreatedBy = aid.String(), ws, ticket.String(), by.String()
	a.CreatedAt, a.RunAt = outbox.FormatTime(created), outbox.FormatTime(runAt)
	if finished != nil {
		s := outbox.FormatTime(*finished)
		a.FinishedAt = &s
	}
	return a, nil
}

func automationResource(id, ticket uuid.UUID) outbox.Resource {
	return outbox.Resource{Type: "automation", IDs: map[string]any{
		"automation": id.String(), "ticket": ticket.String(),
	}}
}
