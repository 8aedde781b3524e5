package integrity

import (
	"crypto/sha256"
	"time"

	"github.com/google/uuid"

	"github.com/auditlog/auditlog/outbox"
)

// EventFields are a stored event's columns, as the canonical bytes need
// them. Optional columns are nil when NULL.
type EventFields struct {
	ID                     [16]byte
	WorkspaceID            string
	OccurredAt, RecordedAt time.Time
	Action, ActorType      string
	ActorID, ActorEmail    *string
	ActorName              *string
	ResourceType           *string
	// ResourceIDs and Details are the stored RFC 8785 JSON objects.
	ResourceIDs *string
	Source      string
	// IP is the address as PostgreSQL's host() prints it.
	IP                   *string
	UserAgent, RequestID *string
	Details              *string
}

// AppendEventBytes appends f's canonical bytes to dst: the RFC 8785 form of
// the event object as the API returns it, byte for byte what SQL's
// audit_event_canonical (migration 00008) renders for the ndjson export.
// The relay hashes these; verification recomputes them from the export with
// an independent RFC 8785 library.
func AppendEventBytes(dst []byte, f *EventFields) []byte {
	dst = append(dst, `{"action":`...)
	dst = outbox.AppendJCSString(dst, f.Action)
	dst = append(dst, `,"actor":{"email":`...)
	dst = appendOptString(dst, f.ActorEmail)
	dst = append(dst, `,"id":`...)
	dst = appendOptString(dst, f.ActorID)
	dst = append(dst, `,"name":`...)
	dst = appendOptString(dst, f.ActorName)
	dst = append(dst, `,"type":`...)
	dst = outbox.AppendJCSString(dst, f.ActorType)
	dst = append(dst, `},"details":`...)
	dst = appendOptRaw(dst, f.Details)
	dst = append(dst, `,"id":"`...)
	dst = append(dst, uuid.UUID(f.ID).String()...)
	dst = append(dst, `","ip":`...)
	dst = appendOptString(dst, f.IP)
	dst = append(dst, `,"occurred_at":"`...)
	dst = f.OccurredAt.UTC().AppendFormat(dst, outbox.TimeFormat)
	dst = append(dst, `","recorded_at":"`...)
	dst = f.RecordedAt.UTC().AppendFormat(dst, outbox.TimeFormat)
	dst = append(dst, `","request_id":`...)
	dst = appendOptString(dst, f.RequestID)
	dst = append(dst, `,"resource":{"ids":`...)
	dst = appendOptRaw(dst, f.ResourceIDs)
	dst = append(dst, `,"type":`...)
	dst = appendOptString(dst, f.ResourceType)
	dst = append(dst, `},"source":`...)
	dst = outbox.AppendJCSString(dst, f.Source)
	dst = append(dst, `,"user_agent":`...)
	dst = appendOptString(dst, f.UserAgent)
	dst = append(dst, `,"workspace_id":`...)
	dst = outbox.AppendJCSString(dst, f.WorkspaceID)
	return append(dst, '}')
}

// Chainer extends hash chains: it hashes events onto the current head of
// their workspace. buf is reused between events.
type Chainer struct {
	heads map[string][]byte
	buf   []byte
}

// NewChainer starts from heads (workspace to head hash); a workspace not in
// it starts at Genesis. heads is used, not copied.
func NewChainer(heads map[string][]byte) *Chainer {
	if heads == nil {
		heads = map[string][]byte{}
	}
	return &Chainer{heads: heads, buf: make([]byte, 0, 4096)}
}

// Next links f onto its workspace's head and returns its prev_hash and
// hash; the hash becomes the new head.
func (c *Chainer) Next(f *EventFields) (prev, hash []byte) {
	prev = c.heads[f.WorkspaceID]
	if prev == nil {
		prev = Genesis
	}
	c.buf = append(c.buf[:0], prev...)
	c.buf = AppendEventBytes(c.buf, f)
	sum := sha256.Sum256(c.buf)
	hash = sum[:]
	c.heads[f.WorkspaceID] = hash
	return prev, hash
}

func appendOptString(dst []byte, s *string) []byte {
	if s == nil {
		return append(dst, "null"...)
	}
	return outbox.AppendJCSString(dst, *s)
}

func appendOptRaw(dst []byte, s *string) []byte {
	if s == nil {
		return append(dst, "null"...)
	}
	return append(dst, *s...)
}
