// Package tickets is the helpdesk's tickets: create, update, close and bulk
// import. Every change and its audit event (ticket.create, ticket.update,
// ticket.close, ticket.import) commit in one transaction; an import of up to
// 10,000 tickets is one COPY of tickets plus one outbox.RecordBatch, all or
// none.
//
// Close is exported for the other modules that close tickets on a member's
// behalf (Slack buttons, automations); they choose the event's source
// through the context.
package tickets

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/outbox"
)

// Audit actions recorded by this package.
const (
	ActionCreate = "ticket.create"
	ActionUpdate = "ticket.update"
	ActionClose  = "ticket.close"
	ActionImport = "ticket.import"
)

// Ticket statuses.
const (
	StatusOpen    = "open"
	StatusPending = "pending"
	StatusClosed  = "closed"
)

// Field limits, matching the table's checks.
const (
	maxSubjectLen     = 500
	maxBodyLen        = 65536
	maxExternalRefLen = 256
)

func validStatus(s string) bool {
	return s == StatusOpen || s == StatusPending || s == StatusClosed
}

func validPriority(p string) bool {
	return p == "low" || p == "normal" || p == "high" || p == "urgent"
}

// ErrNotFound is returned when the ticket does not exist in the workspace.
var ErrNotFound = errors.New("ticket not found")

// Ticket is one stored ticket.
type Ticket struct {
	ID          uuid.UUID
	WorkspaceID string
	Subject     string
	Body        string
	Status      string
	Priority    string
	AssigneeID  *uuid.UUID
	CreatedBy   *uuid.UUID
	ExternalRef *string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	ClosedAt    *time.Time
}

// ticketJSON is a ticket as the API shows it.
type ticketJSON struct {
	ID          string  `json:"id"`
	WorkspaceID string  `json:"workspace_id"`
	Subject     string  `json:"subject"`
	Body        string  `json:"body"`
	Status      string  `json:"status"`
	Priority    string  `json:"priority"`
	AssigneeID  *string `json:"assignee_id"`
	CreatedBy   *string `json:"created_by"`
	ExternalRef *string `json:"external_ref"`
	CreatedAt   string  `json:"created_at"`
	UpdatedAt   string  `json:"updated_at"`
	ClosedAt    *string `json:"closed_at"`
}

func (t Ticket) json() ticketJSON {
	out := ticketJSON{
		ID: t.ID.String(), WorkspaceID: t.WorkspaceID, Subject: t.Subject, Body: t.Body,
		Status: t.Status, Priority: t.Priority, AssigneeID: uuidString(t.AssigneeID),
		CreatedBy: uuidString(t.CreatedBy), ExternalRef: t.ExternalRef,
		CreatedAt: outbox.FormatTime(t.CreatedAt), UpdatedAt: outbox.FormatTime(t.UpdatedAt),
	}
	if t.ClosedAt != nil {
		s := outbox.FormatTime(*t.ClosedAt)
		out.ClosedAt = &s
	}
	return out
}

func uuidString(u *uuid.UUID) *string {
	if u == nil {
		return nil
	}
	s := u.String()
	return &s
}

const ticketColumns = `id, workspace_id, subject, body, status, priority, assignee_id, created_by, external_ref, created_at, updated_at, closed_at`

const (
	selectTicketSQL          = `SELECT ` + ticketColumns + ` FROM tickets WHERE workspace_id = $1 AND id = $2`
	selectTicketForUpdateSQL = selectTicketSQL + ` FOR UPDATE`
	insertTicketSQL          = `
INSERT INTO tickets (id, workspace_id, subject, body, status, priority, assignee_id, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING ` + ticketColumns
	updateTicketSQL = `
UPDATE tickets
SET subject = $3, body = $4, status = $5, priority = $6, assignee_id = $7, updated_at = now(),
    closed_at = CASE WHEN $5 = 'closed' THEN coalesce(closed_at, now()) END
WHERE workspace_id = $1 AND id = $2
RETURNING ` + ticketColumns
	// lockAssigneeSQL checks that the assignee is a member of the workspace
	// and keeps it from being removed until the transaction ends.
	lockAssigneeSQL = `SELECT 1 FROM members WHERE workspace_id = $1 AND id = $2 FOR KEY SHARE`
)

func scanTicket(row pgx.Row) (Ticket, error) {
	var t Ticket
	err := row.Scan(&t.ID, &t.WorkspaceID, &t.Subject, &t.Body, &t.Status, &t.Priority,
		&t.AssigneeID, &t.CreatedBy, &t.ExternalRef, &t.CreatedAt, &t.UpdatedAt, &t.ClosedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Ticket{}, ErrNotFound
	}
	return t, err
}

// Get returns ticket id of workspace ws.
func Get(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, ws string, id uuid.UUID) (Ticket, error) {
	t, err := scanTicket(q.QueryRow(ctx, selectTicketSQL, ws, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Ticket{}, fmt.Errorf("reading ticket: %w", err)
	}
	return t, err
}

func ticketResource(id uuid.UUID) outbox.Resource {
	return outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": id.String()}}
}

// change is one field's before and after in an event's details.
func change(from, to any) map[string]any { return map[string]any{"from": from, "to": to} }

// Close closes ticket id of workspace ws inside tx and records ticket.close
// with details {"changes": {"status": {"from", "to"}}} plus extra (for
// example the automation and attempt that did it). Actor and source come
// from ctx. A ticket already closed is left alone and nothing is recorded:
// changed is false. ErrNotFound when there is no such ticket.
func Close(ctx context.Context, tx pgx.Tx, ws string, id uuid.UUID, extra map[string]any) (t Ticket, changed bool, err error) {
	before, err := scanTicket(tx.QueryRow(ctx, selectTicketForUpdateSQL, ws, id))
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Ticket{}, false, err
		}
		return Ticket{}, false, fmt.Errorf("locking ticket: %w", err)
	}
	if before.Status == StatusClosed {
		return before, false, nil
	}
	after, err := scanTicket(tx.QueryRow(ctx, updateTicketSQL, ws, id, before.Subject, before.Body,
		StatusClosed, before.Priority, before.AssigneeID))
	if err != nil {
		return Ticket{}, false, fmt.Errorf("closing ticket: %w", err)
	}
	details := maps.Clone(extra)
	if details == nil {
		details = map[string]any{}
	}
	details["changes"] = map[string]any{"status": change(before.Status, StatusClosed)}
	if err := outbox.Record(ctx, tx, outbox.Event{
		WorkspaceID: ws,
		Action:      ActionClose,
		Resource:    ticketResource(id),
		Details:     details,
	}); err != nil {
		return Ticket{}, false, err
	}
	return after, true, nil
}
