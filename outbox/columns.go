package outbox

import (
	"database/sql/driver"
	"net/netip"

	"github.com/jackc/pgx/v5/pgtype"
)

// Record and Queue hand pgx one value per column of their INSERT
// (RecordBatch encodes its COPY itself: copybinary.go). How a value
// is typed decides how pgx encodes it: a uuid.UUID goes through its
// driver.Valuer as a string, fails the binary uuid plan, builds an error and
// is re-parsed; a *string is dereferenced by reflection and boxed again; a
// string or time.Time is boxed (allocated) on its way into []any. Pointers to
// the small types below implement pgx's valuer interfaces directly, so every
// column takes a direct binary plan and boxing a pointer allocates nothing.

// textCol is a text column value; ok false is NULL.
type textCol struct {
	s  string
	ok bool
}

// TextValue implements pgtype.TextValuer.
func (t *textCol) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: t.s, Valid: t.ok}, nil
}

func (t *textCol) set(s string) { *t = textCol{s: s, ok: true} }
func (t *textCol) setPtr(s *string) {
	if s == nil {
		*t = textCol{}
		return
	}
	t.set(*s)
}

// inetCol is an inet column value; the zero Addr is NULL.
type inetCol struct{ addr netip.Addr }

// Value implements driver.Valuer, the text form pgx falls back to where it
// knows no column types: under QueryExecModeExec and SimpleProtocol (with
// PgBouncer, say) the binary plan below is never tried.
func (c *inetCol) Value() (driver.Value, error) {
	if !c.addr.IsValid() {
		return nil, nil
	}
	return c.addr.String(), nil
}

// NetipPrefixValue implements pgtype.NetipPrefixValuer: a host address is
// the prefix of its full length; an invalid prefix encodes as NULL.
func (c *inetCol) NetipPrefixValue() (netip.Prefix, error) {
	if !c.addr.IsValid() {
		return netip.Prefix{}, nil
	}
	return netip.PrefixFrom(c.addr, c.addr.BitLen()), nil
}

// outboxCols holds one row's column values in insertOutboxSQL's order, and
// args points at them: the arguments of one INSERT.
type outboxCols struct {
	id                                    pgtype.UUID
	occurredAt, recordedAt                pgtype.Timestamptz
	ip                                    inetCol
	workspaceID, action, actorType        textCol
	actorID, actorEmail, actorName        textCol
	resourceType, resourceIDs, resourceFl textCol
	source, userAgent, requestID, details textCol
	args                                  []any
}

func newOutboxCols() *outboxCols {
	c := &outboxCols{}
	c.args = []any{
		&c.id, &c.workspaceID, &c.occurredAt, &c.recordedAt, &c.action, &c.actorType, &c.actorID,
		&c.actorEmail, &c.actorName, &c.resourceType, &c.resourceIDs, &c.resourceFl,
		&c.source, &c.ip, &c.userAgent, &c.requestID, &c.details,
	}
	return c
}

// load sets the column values from w and returns them as arguments.
func (c *outboxCols) load(w *row) []any {
	c.id = pgtype.UUID{Bytes: w.id, Valid: true}
	c.workspaceID.set(w.workspaceID)
	c.occurredAt = pgtype.Timestamptz{Time: w.occurredAt, Valid: true}
	c.recordedAt = pgtype.Timestamptz{Time: w.recordedAt, Valid: true}
	c.action.set(w.action)
	c.actorType.set(w.actorType)
	c.actorID.setPtr(w.actorID)
	c.actorEmail.setPtr(w.actorEmail)
	c.actorName.setPtr(w.actorName)
	c.resourceType.setPtr(w.resourceType)
	c.resourceIDs.setPtr(w.resourceIDs)
	c.resourceFl.set(w.resourceIDsFlat)
	c.source.set(w.source)
	c.ip = inetCol{}
	if w.ip != nil {
		c.ip.addr = *w.ip
	}
	c.userAgent.setPtr(w.userAgent)
	c.requestID.setPtr(w.requestID)
	c.details.setPtr(w.details)
	return c.args
}
