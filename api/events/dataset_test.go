package events

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/auditlog/auditlog/outbox"
)

// wantEvent is an event as the tests expect it stored, computed in Go from
// the input independently of the code under test.
type wantEvent struct {
	ID, Workspace              string
	Occurred                   time.Time
	Action, ActorType          string
	ActorID, Email, Name       *string
	ResourceType, ResourceIDs  *string
	Flat, Source               string
	IP, UA, RequestID, Details *string
}

// Value pools: hostile text where the contract allows any text, and values
// whose normalisation (case, spaces) the filters must mirror.
var (
	poolActions = []string{"ticket.create", "ticket.update", "ticket.close", "tickets.merge",
		"member.invite", "member.remove", "automation.run", "ticket-x.y"}
	poolEmails  = []string{"Alice@Acme.io ", "bob@acme.io", "o'neil@acme.io", "=cmd@evil.io", "back\\slash@acme.io", ""}
	poolIDs     = []string{"u_1", "u_2", "u_3", "'); DROP TABLE audit_events; --", "$$", "ünï 🦄", `a\'b`, ""}
	poolNames   = []string{"Alice Liddell", "Smith, John", `Quote "Q" Person`, "multi\nline\rname", "=1+2", "-neg", "@at", "\ttab", ""}
	poolRTypes  = []string{"ticket", "member", ""}
	poolSources = []string{"web", "api", "slack", "workflow"}
	poolIPs     = []string{"203.0.113.7", "2001:DB8::1", "::ffff:192.0.2.1", ""}
	poolUAs     = []string{"Mozilla/5.0 (X11)", "+plus-agent", "\tua-tab", "\rua-cr", "\nua-lf", ""}
	poolRIDs    = []string{"req_1", "-1", ""}
)

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func ptr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// genDataset makes n random events over workspaces ws_a and ws_b between
// 2026-10-01 and 2026-12-14. Timestamps come from a pool of n/5, so many
// events share an occurred_at and the id tie-break matters.
func genDataset(rng *rand.Rand, n int) ([]outbox.Event, []wantEvent) {
	start := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	span := int64(74 * 24 * time.Hour / time.Millisecond)
	stamps := make([]time.Time, n/5+1)
	for i := range stamps {
		stamps[i] = start.Add(time.Duration(rng.Int64N(span)) * time.Millisecond)
	}
	zone := time.FixedZone("+05:30", 5*3600+1800)
	in := make([]outbox.Event, n)
	want := make([]wantEvent, n)
	for i := range in {
		ts := pick(rng, stamps)
		id := uuid.Must(uuid.NewRandomFromReader(rngReader{rng}))
		e := outbox.Event{
			ID:          id.String(),
			WorkspaceID: pick(rng, []string{"ws_a", "ws_b"}),
			// Sub-millisecond noise and a non-UTC offset: stored truncated, in UTC.
			OccurredAt: ts.Add(time.Duration(rng.IntN(int(time.Millisecond)))).In(zone),
			Action:     pick(rng, poolActions),
			Source:     pick(rng, poolSources),
			IP:         pick(rng, poolIPs),
			UserAgent:  pick(rng, poolUAs),
			RequestID:  pick(rng, poolRIDs),
		}
		e.Actor = outbox.Actor{ID: pick(rng, poolIDs), Email: pick(rng, poolEmails), Name: pick(rng, poolNames)}
		switch {
		case e.Actor.ID != "" || e.Actor.Email != "":
			e.Actor.Type = pick(rng, []string{outbox.ActorUser, outbox.ActorAPIKey})
		default:
			e.Actor.Type = outbox.ActorSystem
		}
		w := wantEvent{
			ID: e.ID, Workspace: e.WorkspaceID, Occurred: ts, Action: e.Action,
			ActorType: e.Actor.Type, ActorID: ptr(strings.TrimSpace(e.Actor.ID)),
			Email: ptr(strings.ToLower(strings.TrimSpace(e.Actor.Email))), Name: ptr(strings.TrimSpace(e.Actor.Name)),
			Source: e.Source, UA: ptr(e.UserAgent), RequestID: ptr(e.RequestID),
		}
		if e.IP != "" && e.Source != "slack" && e.Source != "workflow" {
			w.IP = ptr(netip.MustParseAddr(e.IP).Unmap().String())
		}
		if rt := pick(rng, poolRTypes); rt != "" {
			e.Resource.Type = rt
			w.ResourceType = &rt
		}
		switch rng.IntN(3) {
		case 1:
			e.Resource.IDs = map[string]any{"ticket": "t_" + pick(rng, []string{"1", "2", "3"})}
		case 2:
			e.Resource.IDs = map[string]any{"channel": "C0451", "ticket": []string{"t_2", "t_1", "t_2"}, "odd": "a;b=c,d%"}
		}
		if e.Resource.IDs != nil {
			w.ResourceIDs, w.Flat = expectIDs(e.Resource.IDs)
		}
		switch rng.IntN(3) {
		case 1:
			e.Details = map[string]any{"changes": map[string]any{"status": map[string]any{"to": "closed", "from": "open"}}}
			w.Details = ptr(`{"changes":{"status":{"from":"open","to":"closed"}}}`)
		case 2:
			// Characters an HTML-escaping encoder would rewrite.
			e.Details = json.RawMessage("{ \"b\": 1, \"a\": \"<&> \u2028 \\\"q\\\", x\" }")
			w.Details = ptr("{\"a\":\"<&> \u2028 \\\"q\\\", x\",\"b\":1}")
		}
		in[i], want[i] = e, w
	}
	return in, want
}

// expectIDs computes the canonical JSON and the flat form of ids whose
// values are strings or string slices, per contract §1.
func expectIDs(ids map[string]any) (*string, string) {
	norm := map[string][]string{}
	for k, v := range ids {
		switch x := v.(type) {
		case string:
			norm[k] = []string{x}
		case []string:
			s := slices.Clone(x)
			sort.Strings(s)
			norm[k] = slices.Compact(s)
		}
	}
	keys := make([]string, 0, len(norm))
	for k := range norm {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var js, flat strings.Builder
	js.WriteByte('{')
	esc := strings.NewReplacer("%", "%25", ";", "%3B", ",", "%2C", "=", "%3D")
	for i, k := range keys {
		if i > 0 {
			js.WriteByte(',')
			flat.WriteByte(';')
		}
		kj, _ := json.Marshal(k)
		js.Write(kj)
		js.WriteByte(':')
		if _, single := ids[k].(string); single {
			vj, _ := json.Marshal(norm[k][0])
			js.Write(vj)
		} else {
			vj, _ := json.Marshal(norm[k])
			js.Write(vj)
		}
		flat.WriteString(esc.Replace(k) + "=")
		for j, v := range norm[k] {
			if j > 0 {
				flat.WriteByte(',')
			}
			flat.WriteString(esc.Replace(v))
		}
	}
	js.WriteByte('}')
	s := js.String()
	return &s, flat.String()
}

// rngReader feeds uuid generation from the seeded rng, so a failing seed
// reproduces exactly.
type rngReader struct{ rng *rand.Rand }

func (r rngReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r.rng.Uint32())
	}
	return len(p), nil
}

// matches is the model of the filters: does w pass f in workspace ws?
func (w wantEvent) matches(ws string, f Filters) bool {
	if w.Workspace != ws {
		return false
	}
	in := func(vals []string, v *string) bool {
		return len(vals) == 0 || (v != nil && slices.Contains(vals, *v))
	}
	if !in(f.ActorEmails, w.Email) || !in(f.ActorIDs, w.ActorID) || !in(f.ResourceTypes, w.ResourceType) {
		return false
	}
	if len(f.Sources) > 0 && !slices.Contains(f.Sources, w.Source) {
		return false
	}
	if len(f.Actions) > 0 {
		ok := false
		for _, a := range f.Actions {
			if p, isPrefix := strings.CutSuffix(a, "*"); isPrefix {
				ok = ok || strings.HasPrefix(w.Action, p)
			} else {
				ok = ok || w.Action == a
			}
		}
		if !ok {
			return false
		}
	}
	if !f.From.IsZero() && w.Occurred.Before(f.From) {
		return false
	}
	if !f.To.IsZero() && !w.Occurred.Before(f.To) {
		return false
	}
	return true
}

// expected returns the events of ws matching f, oldest first by
// (occurred_at, id); uuid text order is byte order, as in PostgreSQL.
func expected(all []wantEvent, ws string, f Filters) []wantEvent {
	var out []wantEvent
	for _, w := range all {
		if w.matches(ws, f) {
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Occurred.Equal(out[j].Occurred) {
			return out[i].Occurred.Before(out[j].Occurred)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// asEvent is the JSON event the API must return for w (seq aside).
func (w wantEvent) asEvent() Event {
	raw := func(s *string) json.RawMessage {
		if s == nil {
			return json.RawMessage("null")
		}
		return json.RawMessage(*s)
	}
	return Event{
		ID: w.ID, WorkspaceID: w.Workspace,
		OccurredAt: w.Occurred.UTC().Format("2006-01-02T15:04:05.000Z"),
		RecordedAt: testNow.Format("2006-01-02T15:04:05.000Z"),
		Action:     w.Action,
		Actor:      EventActor{Type: w.ActorType, ID: w.ActorID, Email: w.Email, Name: w.Name},
		Resource:   EventResource{Type: w.ResourceType, IDs: raw(w.ResourceIDs)},
		Source:     w.Source, IP: w.IP, UserAgent: w.UA, RequestID: w.RequestID,
		Details: raw(w.Details),
	}
}

// randomFilters draws a filter combination as query values, mixing values
// that exist, values that do not, and values needing normalisation.
func randomFilters(rng *rand.Rand) map[string][]string {
	q := map[string][]string{}
	some := func(param string, vals []string) {
		if rng.IntN(10) < 3 {
			k := 1 + rng.IntN(3)
			for range k {
				q[param] = append(q[param], pick(rng, vals))
			}
		}
	}
	some(ParamActorEmail, []string{"alice@acme.io", " ALICE@acme.IO", "bob@acme.io", "o'neil@acme.io", "back\\slash@acme.io", "nobody@x.io"})
	some(ParamActorID, []string{"u_1", "u_2", "'); DROP TABLE audit_events; --", "$$", "ünï 🦄", `a\'b`, "missing"})
	some(ParamAction, []string{"ticket.create", "ticket.update", "member.invite", "ticket.*", "ticket*", "member.*", "t*", "automation.run", "nope.nope"})
	some(ParamResourceType, []string{"ticket", "member", "nope"})
	some(ParamSource, []string{"web", "api", "slack", "WEB"})
	zone := time.FixedZone("-07:00", -7*3600)
	start := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	from := start.Add(time.Duration(rng.Int64N(int64(60 * 24 * time.Hour))))
	if rng.IntN(10) < 3 {
		q[ParamFrom] = []string{from.In(zone).Format(time.RFC3339Nano)}
	}
	if rng.IntN(10) < 3 {
		q[ParamTo] = []string{from.Add(time.Duration(1 + rng.Int64N(int64(30*24*time.Hour)))).Format(time.RFC3339Nano)}
	}
	return q
}
