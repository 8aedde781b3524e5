package tickets

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/api/httperr"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/outbox"
)

// SourceImport is the source of the events of a bulk import.
const SourceImport = "import"

// importTicket is one element of an import body.
type importTicket struct {
	Subject     string `json:"subject"`
	Body        string `json:"body"`
	Status      string `json:"status"`
	Priority    string `json:"priority"`
	ExternalRef string `json:"external_ref"`
}

// importColumns are the columns the import copies, in row order.
var importColumns = []string{
	"id", "workspace_id", "subject", "body", "status", "priority", "created_by",
	"external_ref", "created_at", "updated_at", "closed_at",
}

// findExternalRefSQL finds the first of refs already used in the workspace.
const findExternalRefSQL = `
SELECT external_ref FROM tickets
WHERE workspace_id = $1 AND external_ref = ANY($2::text[])
LIMIT 1`

// decodeImport reads a JSON array of at most max tickets, validates and
// normalises each one, and refuses the whole import at the first bad ticket
// with an error naming it ("[5000].subject"). Unknown fields are refused so
// a misspelt field is not silently dropped.
func decodeImport(r io.Reader, max int) ([]importTicket, *web.Error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	tok, err := dec.Token()
	if err != nil {
		return nil, web.DecodeError(err, "")
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, web.InvalidError("", "the body must be a JSON array of tickets")
	}
	var out []importTicket
	refs := map[string]int{}
	for dec.More() {
		i := len(out)
		if i >= max {
			return nil, &web.Error{Status: http.StatusRequestEntityTooLarge, Code: httperr.CodeTooLarge,
				Message: fmt.Sprintf("an import holds at most %d tickets", max)}
		}
		prefix := fmt.Sprintf("[%d].", i)
		var t importTicket
		if err := dec.Decode(&t); err != nil {
			return nil, web.DecodeError(err, prefix)
		}
		t, verr := t.normalise(prefix)
		if verr != nil {
			return nil, verr
		}
		if t.ExternalRef != "" {
			if j, dup := refs[t.ExternalRef]; dup {
				return nil, web.InvalidError(prefix+"external_ref", fmt.Sprintf("repeats the external_ref of [%d]", j))
			}
			refs[t.ExternalRef] = i
		}
		out = append(out, t)
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return nil, web.DecodeError(err, "")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, web.DecodeError(err, "")
		}
		return nil, web.InvalidError("", "the body must hold one JSON array")
	}
	if len(out) == 0 {
		return nil, web.InvalidError("", "the import holds no tickets")
	}
	return out, nil
}

func (t importTicket) normalise(prefix string) (importTicket, *web.Error) {
	subject, verr := checkSubject(prefix+"subject", t.Subject)
	if verr != nil {
		return t, verr
	}
	t.Subject = subject
	if verr := web.Text(prefix+"body", t.Body, maxBodyLen); verr != nil {
		return t, verr
	}
	if t.Status == "" {
		t.Status = StatusOpen
	}
	if !validStatus(t.Status) {
		return t, web.InvalidError(prefix+"status", "must be one of open, pending, closed")
	}
	if t.Priority == "" {
		t.Priority = "normal"
	}
	if !validPriority(t.Priority) {
		return t, web.InvalidError(prefix+"priority", "must be one of low, normal, high, urgent")
	}
	t.ExternalRef = strings.TrimSpace(t.ExternalRef)
	if verr := web.Text(prefix+"external_ref", t.ExternalRef, maxExternalRefLen); verr != nil {
		return t, verr
	}
	return t, nil
}

// importTickets handles POST /tickets/import: a JSON array of tickets stored
// with one COPY, each recorded as a ticket.import event (source "import") by
// one outbox.RecordBatch, in one transaction.
func (m *Module) importTickets(c *gin.Context) {
	actor, _ := session.MemberFrom(c)
	if !web.CheckJSONContentType(c) {
		return
	}
	in, verr := decodeImport(http.MaxBytesReader(c.Writer, c.Request.Body, m.opts.MaxImportBytes), m.opts.MaxImport)
	if verr != nil {
		web.Abort(c, m.logger, "", verr)
		return
	}
	importID, err := uuid.NewV7()
	if err != nil {
		web.Fail(c, m.logger, "importing tickets", err)
		return
	}
	now := time.Now().UTC()
	ids := make([]string, len(in))
	rows := make([][]any, len(in))
	events := make([]outbox.Event, len(in))
	var refs []string
	for i, t := range in {
		id, err := uuid.NewV7()
		if err != nil {
			web.Fail(c, m.logger, "importing tickets", err)
			return
		}
		ids[i] = id.String()
		var ref *string
		details := map[string]any{
			"import_id": importID.String(), "index": i,
			"subject": t.Subject, "status": t.Status, "priority": t.Priority,
		}
		if t.ExternalRef != "" {
			ref = &in[i].ExternalRef
			refs = append(refs, t.ExternalRef)
			details["external_ref"] = t.ExternalRef
		}
		var closedAt *time.Time
		if t.Status == StatusClosed {
			closedAt = &now
		}
		rows[i] = []any{id, actor.WorkspaceID, t.Subject, t.Body, t.Status, t.Priority, actor.ID,
			ref, now, now, closedAt}
		events[i] = outbox.Event{
			WorkspaceID: actor.WorkspaceID,
			Action:      ActionImport,
			Source:      SourceImport,
			Resource:    ticketResource(id),
			Details:     details,
		}
	}

	ctx := c.Request.Context()
	err = pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		if len(refs) > 0 {
			var dup string
			err := tx.QueryRow(ctx, findExternalRefSQL, actor.WorkspaceID, refs).Scan(&dup)
			switch {
			case err == nil:
				field := ""
				for i, t := range in {
					if t.ExternalRef == dup {
						field = fmt.Sprintf("[%d].external_ref", i)
						break
					}
				}
				return web.ConflictError(field, "a ticket with this external_ref already exists")
			case !errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("checking external refs: %w", err)
			}
		}
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"tickets"}, importColumns, pgx.CopyFromRows(rows))
		if err != nil {
			if _, ok := web.UniqueViolation(err); ok {
				// Another import took an external_ref since the check.
				return web.ConflictError("", "a ticket with one of these external_refs already exists")
			}
			return fmt.Errorf("copying %d tickets: %w", len(rows), err)
		}
		if int(n) != len(rows) {
			return fmt.Errorf("copying tickets: wrote %d of %d", n, len(rows))
		}
		return outbox.RecordBatch(ctx, tx, events)
	})
	if err != nil {
		web.Abort(c, m.logger, "importing tickets", err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"import_id": importID.String(), "imported": len(ids), "ids": ids})
}
