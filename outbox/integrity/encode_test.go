package integrity

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/gowebpki/jcs"
	"github.com/stretchr/testify/require"
)

// referenceBytes renders f the slow, obvious way: the API's object through
// encoding/json, then RFC 8785 by github.com/gowebpki/jcs.
func referenceBytes(t testing.TB, f *EventFields) []byte {
	t.Helper()
	raw := func(s *string) json.RawMessage {
		if s == nil {
			return json.RawMessage("null")
		}
		return json.RawMessage(*s)
	}
	obj := map[string]any{
		"id": uuid.UUID(f.ID).String(), "workspace_id": f.WorkspaceID,
		"occurred_at": f.OccurredAt.UTC().Format("2006-01-02T15:04:05.000Z"),
		"recorded_at": f.RecordedAt.UTC().Format("2006-01-02T15:04:05.000Z"),
		"action":      f.Action,
		"actor":       map[string]any{"type": f.ActorType, "id": f.ActorID, "email": f.ActorEmail, "name": f.ActorName},
		"resource":    map[string]any{"type": f.ResourceType, "ids": raw(f.ResourceIDs)},
		"source":      f.Source, "ip": f.IP, "user_agent": f.UserAgent, "request_id": f.RequestID,
		"details": raw(f.Details),
	}
	b, err := json.Marshal(obj)
	require.NoError(t, err)
	out, err := jcs.Transform(b)
	require.NoError(t, err)
	return out
}

func strp(s string) *string { return &s }

func TestAppendEventBytesMatchesRFC8785(t *testing.T) {
	at := time.Date(2026, 11, 25, 20, 30, 25, 123456789, time.UTC)
	full := &EventFields{
		ID: uuid.MustParse("01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77"), WorkspaceID: "ws_acme",
		OccurredAt: at, RecordedAt: at.Add(57 * time.Millisecond), Action: "ticket.update", ActorType: "user",
		ActorID: strp("u_42"), ActorEmail: strp("alice@acme.io"), ActorName: strp("Alice \"Q\" <b>&\\ \x01\x1f\x7f é 🦄 \u2028"),
		ResourceType: strp("ticket"), ResourceIDs: strp(`{"channel":"C0451","ticket":"t_981"}`), Source: "web",
		IP: strp("2001:db8::1"), UserAgent: strp("ua\t\r\n\b\f"), RequestID: strp("req_8f2c"),
		Details: strp(`{"changes":{"status":{"from":"open","to":"closed"}},"n":1e+21}`),
	}
	require.Equal(t, string(referenceBytes(t, full)), string(AppendEventBytes(nil, full)))
	bare := &EventFields{ID: full.ID, WorkspaceID: "w", OccurredAt: at, RecordedAt: at, Action: "a.b", ActorType: "system", Source: "system"}
	require.Equal(t, string(referenceBytes(t, bare)), string(AppendEventBytes(nil, bare)))

	// The chainer links each workspace onto its own head.
	c := NewChainer(map[string][]byte{"w": bytes.Repeat([]byte{7}, 32)})
	p1, h1 := c.Next(full)
	require.Equal(t, Genesis, p1)
	require.Equal(t, Link(Genesis, AppendEventBytes(nil, full)), h1)
	p2, h2 := c.Next(bare)
	require.Equal(t, bytes.Repeat([]byte{7}, 32), p2)
	p3, h3 := c.Next(bare)
	require.Equal(t, h2, p3)
	require.Equal(t, Link(h2, AppendEventBytes(nil, bare)), h3)
}

func FuzzAppendEventBytes(f *testing.F) {
	f.Add("Alice", "ua", "req", "a@b", "\"\\\x01\u2028é")
	f.Fuzz(func(t *testing.T, name, ua, req, email, id string) {
		for _, s := range []string{name, ua, req, email, id} {
			if !utf8.ValidString(s) || bytes.IndexByte([]byte(s), 0) >= 0 {
				t.Skip("stored text is valid UTF-8 without NUL")
			}
		}
		ev := &EventFields{WorkspaceID: "ws", OccurredAt: time.Unix(1, 5e6), RecordedAt: time.Unix(2, 0),
			Action: "x.y", ActorType: "user", ActorID: &id, ActorEmail: &email, ActorName: &name,
			Source: "api", UserAgent: &ua, RequestID: &req}
		require.Equal(t, string(referenceBytes(t, ev)), string(AppendEventBytes(nil, ev)))
	})
}

func TestAppendUUIDMatchesString(t *testing.T) {
	for range 100 {
		id := uuid.New()
		require.Equal(t, id.String(), string(appendUUID(nil, id)))
	}
	require.Equal(t, uuid.Nil.String(), string(appendUUID([]byte{}, uuid.Nil)))
}
