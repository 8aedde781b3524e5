package integrity

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

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
	dst = appendUUID(dst, f.ID)
	dst = append(dst, `","ip":`...)
	dst = appendOptString(dst, f.IP)
	dst = append(dst, `,"occurred_at":"`...)
	dst = outbox.AppendTime(dst, f.OccurredAt)
	dst = append(dst, `","recorded_at":"`...)
	dst = outbox.AppendTime(dst, f.RecordedAt)
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
	// hashes is where the hashes Next returns are carved from: one
	// allocation per hashBlock events rather than one per event.
	hashes []byte
}

// hashBlock is the number of hashes a Chainer allocates at once.
const hashBlock = 128

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
	if len(c.hashes) == 0 {
		c.hashes = make([]byte, hashBlock*HashSize)
	}
	// The full slice expression keeps an append to hash from writing over
	// the next event's hash.
	hash = c.hashes[:HashSize:HashSize]
	c.hashes = c.hashes[HashSize:]
	sum := sha256.Sum256(c.buf)
	copy(hash, sum[:])
	c.heads[f.WorkspaceID] = hash
	return prev, hash
}

// appendUUID appends id in its canonical form (8-4-4-4-12 lowercase hex
// digits, as uuid.UUID.String), without String's allocation.
func appendUUID(dst []byte, id [16]byte) []byte {
	dst = hex.AppendEncode(dst, id[0:4])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[4:6])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[6:8])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[8:10])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, id[10:16])
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
