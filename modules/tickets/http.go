package tickets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/modules/internal/option"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
)

// Options configure the tickets module. Zero values take the defaults.
type Options struct {
	// MaxImport is the most tickets one import may carry (1–100000).
	// Default: 10000.
	MaxImport int
	// MaxImportBytes bounds an import's request body; a larger one is
	// refused with 413 (1 KiB–1 GiB). Default: 33554432 (32 MiB).
	MaxImportBytes int64
}

// Defaults of Options.
const (
	MaxImportDefault      = 10000
	MaxImportBytesDefault = 32 << 20
)

// Module serves /app/tickets.
type Module struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	opts   Options
}

// New returns the tickets module over pool.
func New(pool *pgxpool.Pool, logger *slog.Logger, opts Options) (*Module, error) {
	if err := web.CheckDeps("tickets", pool, logger); err != nil {
		return nil, err
	}
	if err := option.Bounded(&opts.MaxImport, MaxImportDefault, 1, 100000, "tickets: MaxImport", "1-100000"); err != nil {
		return nil, err
	}
	if err := option.Bounded(&opts.MaxImportBytes, MaxImportBytesDefault, 1024, 1<<30, "tickets: MaxImportBytes", "1 KiB-1 GiB"); err != nil {
		return nil, err
	}
	return &Module{pool: pool, logger: logger.With(slog.String("module", "tickets")), opts: opts}, nil
}

// Register mounts the routes on r, which must authenticate members with
// session.Auth.Middleware:
//
//	POST  /tickets             create (agent)
//	POST  /tickets/import      bulk import, a JSON array (admin)
//	GET   /tickets/:id         read (any member)
//	PATCH /tickets/:id         update (agent)
//	POST  /tickets/:id/close   close (agent)
func (m *Module) Register(r *gin.RouterGroup) {
	r.POST("/tickets", session.Require(session.RoleAgent), m.create)
	r.POST("/tickets/import", session.Require(session.RoleAdmin), m.importTickets)
	r.GET("/tickets/:id", session.Require(session.RoleViewer), m.get)
	r.PATCH("/tickets/:id", session.Require(session.RoleAgent), m.update)
	r.POST("/tickets/:id/close", session.Require(session.RoleAgent), m.close)
}

// checkAssignee refuses an assignee that is not a member of ws.
func checkAssignee(ctx context.Context, tx pgx.Tx, ws string, id uuid.UUID) error {
	var one int
	err := tx.QueryRow(ctx, lockAssigneeSQL, ws, id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return web.InvalidError("assignee_id", "is not a member of this workspace")
	}
	if err != nil {
		return fmt.Errorf("checking assignee: %w", err)
	}
	return nil
}

type createRequest struct {
	Subject    string  `json:"subject"`
	Body       string  `json:"body"`
	Priority   string  `json:"priority"`
	AssigneeID *string `json:"assignee_id"`
}

func checkSubject(field, s string) (string, *web.Error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", web.InvalidError(field, "is required")
	}
	return s, web.Text(field, s, maxSubjectLen)
}

// badAssignee is the refusal of an assignee_id that is not a UUID or null.
const badAssignee = "must be a member id (UUID) or null"

func (m *Module) create(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	var req createRequest
	if !web.DecodeJSON(c, web.MaxBodyBytesDefault, &req) {
		return
	}
	subject, verr := checkSubject("subject", req.Subject)
	if verr == nil {
		verr = web.Text("body", req.Body, maxBodyLen)
	}
	if verr != nil {
		web.Abort(c, m.logger, "", verr)
		return
	}
	if req.Priority == "" {
		req.Priority = "normal"
	}
	if !validPriority(req.Priority) {
		web.Invalid(c, "priority", "must be one of low, normal, high, urgent")
		return
	}
	var assignee *uuid.UUID
	if req.AssigneeID != nil {
		id, verr := web.UUID("assignee_id", *req.AssigneeID, badAssignee)
		if verr != nil {
			web.Abort(c, m.logger, "", verr)
			return
		}
		assignee = &id
	}
	id, err := uuid.NewV7()
	if err != nil {
		web.Fail(c, m.logger, "creating a ticket", err)
		return
	}
	ctx := c.Request.Context()
	var t Ticket
	err = outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		if assignee != nil {
			if err := checkAssignee(ctx, tx, actor.WorkspaceID, *assignee); err != nil {
				return err
			}
		}
		var err error
		t, err = scanTicket(tx.QueryRow(ctx, insertTicketSQL, id, actor.WorkspaceID, subject, req.Body,
			StatusOpen, req.Priority, assignee, actor.ID))
		if err != nil {
			return fmt.Errorf("inserting ticket: %w", err)
		}
		details := map[string]any{"subject": subject, "status": StatusOpen, "priority": req.Priority}
		if assignee != nil {
			details["assignee_id"] = assignee.String()
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionCreate,
			Resource:    ticketResource(id),
			Details:     details,
		})
	})
	if err != nil {
		web.Abort(c, m.logger, "creating a ticket", err)
		return
	}
	c.JSON(http.StatusCreated, t.json())
}

func (m *Module) get(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	t, err := Get(c.Request.Context(), m.pool, actor.WorkspaceID, id)
	if errors.Is(err, ErrNotFound) {
		web.NotFound(c, "ticket")
		return
	}
	if err != nil {
		web.Fail(c, m.logger, "reading a ticket", err)
		return
	}
	c.JSON(http.StatusOK, t.json())
}

// updateRequest fields left out are unchanged; assignee_id null unassigns,
// so it is kept raw to tell null from absent.
type updateRequest struct {
	Subject    *string         `json:"subject"`
	Body       *string         `json:"body"`
	Status     *string         `json:"status"`
	Priority   *string         `json:"priority"`
	AssigneeID json.RawMessage `json:"assignee_id"`
}

func (m *Module) update(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	var req updateRequest
	if !web.DecodeJSON(c, web.MaxBodyBytesDefault, &req) {
		return
	}
	if req.Subject != nil {
		s, verr := checkSubject("subject", *req.Subject)
		if verr != nil {
			web.Abort(c, m.logger, "", verr)
			return
		}
		req.Subject = &s
	}
	if req.Body != nil {
		if verr := web.Text("body", *req.Body, maxBodyLen); verr != nil {
			web.Abort(c, m.logger, "", verr)
			return
		}
	}
	if req.Status != nil && !validStatus(*req.Status) {
		web.Invalid(c, "status", "must be one of open, pending, closed")
		return
	}
	if req.Priority != nil && !validPriority(*req.Priority) {
		web.Invalid(c, "priority", "must be one of low, normal, high, urgent")
		return
	}
	setAssignee := req.AssigneeID != nil
	var assignee *uuid.UUID
	if setAssignee && !bytes.Equal(bytes.TrimSpace(req.AssigneeID), []byte("null")) {
		var s string
		if err := json.Unmarshal(req.AssigneeID, &s); err != nil {
			web.Invalid(c, "assignee_id", badAssignee)
			return
		}
		a, verr := web.UUID("assignee_id", s, badAssignee)
		if verr != nil {
			web.Abort(c, m.logger, "", verr)
			return
		}
		assignee = &a
	}

	ctx := c.Request.Context()
	var t Ticket
	err := outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		before, err := scanTicket(tx.QueryRow(ctx, selectTicketForUpdateSQL, actor.WorkspaceID, id))
		if errors.Is(err, ErrNotFound) {
			return web.NotFoundError("ticket")
		}
		if err != nil {
			return fmt.Errorf("locking ticket: %w", err)
		}
		after := before
		changes := map[string]any{}
		if req.Subject != nil && *req.Subject != before.Subject {
			changes["subject"] = change(before.Subject, *req.Subject)
			after.Subject = *req.Subject
		}
		if req.Body != nil && *req.Body != before.Body {
			// Bodies can be long: record that it changed, not the text, so
			// details stay within their size limit.
			changes["body"] = map[string]any{"changed": true}
			after.Body = *req.Body
		}
		if req.Status != nil && *req.Status != before.Status {
			changes["status"] = change(before.Status, *req.Status)
			after.Status = *req.Status
		}
		if req.Priority != nil && *req.Priority != before.Priority {
			changes["priority"] = change(before.Priority, *req.Priority)
			after.Priority = *req.Priority
		}
		if setAssignee && !sameUUID(assignee, before.AssigneeID) {
			if assignee != nil {
				if err := checkAssignee(ctx, tx, actor.WorkspaceID, *assignee); err != nil {
					return err
				}
			}
			changes["assignee_id"] = change(uuidString(before.AssigneeID), uuidString(assignee))
			after.AssigneeID = assignee
		}
		if len(changes) == 0 {
			t = before // nothing changes, nothing to record
			return nil
		}
		t, err = scanTicket(tx.QueryRow(ctx, updateTicketSQL, actor.WorkspaceID, id, after.Subject, after.Body,
			after.Status, after.Priority, after.AssigneeID))
		if err != nil {
			return fmt.Errorf("updating ticket: %w", err)
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionUpdate,
			Resource:    ticketResource(id),
			Details:     map[string]any{"changes": changes},
		})
	})
	if err != nil {
		web.Abort(c, m.logger, "updating a ticket", err)
		return
	}
	c.JSON(http.StatusOK, t.json())
}

func sameUUID(a, b *uuid.UUID) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func (m *Module) close(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	id, ok := web.ParseID(c, "id")
	if !ok {
		return
	}
	ctx := c.Request.Context()
	var t Ticket
	var changed bool
	err := outbox.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		var err error
		t, changed, err = Close(ctx, tx, actor.WorkspaceID, id, nil)
		if errors.Is(err, ErrNotFound) {
			return web.NotFoundError("ticket")
		}
		return err
	})
	if err != nil {
		web.Abort(c, m.logger, "closing a ticket", err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"ticket": t.json(), "changed": changed})
}
