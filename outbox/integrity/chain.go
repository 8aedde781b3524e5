package integrity

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/gowebpki/jcs"
)

// HashSize is the size of a chain hash (SHA-256).
const HashSize = sha256.Size

// Genesis is the prev_hash of a workspace's first event: 32 zero bytes.
var Genesis = make([]byte, HashSize)

// Link returns SHA-256(prev || body): the hash of an event whose canonical
// bytes are body and whose predecessor's hash is prev.
func Link(prev, body []byte) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(body)
	return h.Sum(nil)
}

// Record is one line of an NDJSON export: an event with its place in the
// chain.
type Record struct {
	// Seq is the event's seq.
	Seq int64
	// WorkspaceID is the event's workspace.
	WorkspaceID string
	// PrevHash and Hash are the stored links; nil for an event stored
	// before the chain existed.
	PrevHash, Hash []byte
	// Body is the event's canonical bytes, recomputed from the line.
	Body []byte
}

// chainKeys are the keys an export line adds to the event.
var chainKeys = []string{"seq", "hash", "prev_hash"}

// ParseRecord reads one NDJSON export line: the event object plus seq, hash
// and prev_hash (lowercase hex, or null). Body is the RFC 8785 form of the
// object without those three keys, computed here from the line.
func ParseRecord(line []byte) (Record, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return Record{}, fmt.Errorf("not a JSON object: %w", err)
	}
	var r Record
	if err := json.Unmarshal(obj["seq"], &r.Seq); err != nil || r.Seq <= 0 {
		return Record{}, fmt.Errorf("seq: want a positive integer, got %s", obj["seq"])
	}
	if err := json.Unmarshal(obj["workspace_id"], &r.WorkspaceID); err != nil || r.WorkspaceID == "" {
		return Record{}, fmt.Errorf("workspace_id: want a string, got %s", obj["workspace_id"])
	}
	var err error
	if r.Hash, err = hexField(obj, "hash"); err != nil {
		return Record{}, err
	}
	if r.PrevHash, err = hexField(obj, "prev_hash"); err != nil {
		return Record{}, err
	}
	if (r.Hash == nil) != (r.PrevHash == nil) {
		return Record{}, fmt.Errorf("hash and prev_hash: one is null, the other not")
	}
	for _, k := range chainKeys {
		delete(obj, k)
	}
	r.Body, err = EventBytes(obj)
	if err != nil {
		return Record{}, err
	}
	return r, nil
}

// EventBytes returns the canonical bytes of an event object given by its
// top-level members: RFC 8785, by github.com/gowebpki/jcs, an
// implementation independent of the one the write path uses.
func EventBytes(event map[string]json.RawMessage) ([]byte, error) {
	raw, err := json.Marshal(event)
	if err != nil {
		return nil, fmt.Errorf("re-encoding the event: %w", err)
	}
	body, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("canonicalising the event: %w", err)
	}
	return body, nil
}

func hexField(obj map[string]json.RawMessage, key string) ([]byte, error) {
	v, ok := obj[key]
	if !ok {
		return nil, fmt.Errorf("%s: missing (export with format=ndjson)", key)
	}
	if bytes.Equal(v, []byte("null")) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, fmt.Errorf("%s: want a hex string, got %s", key, v)
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != HashSize {
		return nil, fmt.Errorf("%s: want %d hex digits, got %q", key, 2*HashSize, s)
	}
	return b, nil
}

// NDJSONLineSQL renders the audit_events row e as one NDJSON export line:
// seq, hash and prev_hash (hex, or null before the chain existed) followed by
// the event's canonical members.
const NDJSONLineSQL = `'{"hash":' || coalesce('"' || encode(e.hash, 'hex') || '"', 'null')
    || ',"prev_hash":' || coalesce('"' || encode(e.prev_hash, 'hex') || '"', 'null')
    || ',"seq":' || e.seq::text || ','
    || substr(audit_event_canonical(
           e.id, e.workspace_id, e.occurred_at, e.recorded_at, e.action, e.actor_type,
           e.actor_id, e.actor_email, e.actor_name, e.resource_type, e.resource_ids,
           e.source, e.ip, e.user_agent, e.request_id, e.details), 2)`

// NDJSONCopyOptions make COPY ... TO STDOUT write each line verbatim: CSV
// format with a delimiter and quote character that a JSON text never
// contains raw (JSON escapes every control character), so no field is ever
// quoted and no backslash doubled, as the text format would.
const NDJSONCopyOptions = `WITH (FORMAT csv, DELIMITER E'\x01', QUOTE E'\x02')`
