package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

var testNow = time.Date(2026, 11, 25, 20, 30, 25, 123456789, time.UTC)

func testRecorder(t *testing.T) *Recorder {
	t.Helper()
	r, err := New(Options{Now: func() time.Time { return testNow }})
	require.NoError(t, err)
	return r
}

func validEvent() Event {
	return Event{
		WorkspaceID: "ws_acme",
		Action:      "ticket.update",
		Actor:       Actor{Type: "user", ID: "u_42", Email: "alice@acme.io", Name: "Alice Liddell"},
		Resource:    Resource{Type: "ticket", IDs: map[string]any{"ticket": "t_981", "channel": "C0451"}},
		Source:      "web",
		IP:          "203.0.113.7",
		UserAgent:   "Mozilla/5.0",
		RequestID:   "req_8f2c",
		Details:     map[string]any{"changes": map[string]any{"status": map[string]any{"from": "open", "to": "closed"}}},
	}
}

func TestNormaliseValidEvent(t *testing.T) {
	t.Parallel()
	r := testRecorder(t)
	w, err := r.normalise(validEvent(), testNow)
	require.NoError(t, err)
	require.Equal(t, "ws_acme", w.workspaceID)
	require.Equal(t, testNow.Truncate(time.Millisecond), w.occurredAt, "occurred_at defaults to recording time, truncated to ms")
	require.Equal(t, w.occurredAt, w.recordedAt)
	require.Equal(t, 7, int(w.id.Version()), "generated ids are UUIDv7")
	require.Equal(t, "channel=C0451;ticket=t_981", w.resourceIDsFlat)
	require.Equal(t, `{"channel":"C0451","ticket":"t_981"}`, *w.resourceIDs)
	require.Equal(t, `{"changes":{"status":{"from":"open","to":"closed"}}}`, *w.details)
	require.Equal(t, "203.0.113.7", w.ip.String())
	require.Equal(t, "alice@acme.io", *w.actorEmail)
}

// Each rule of contract §1 has at least one refusing case, named by field.
func TestNormaliseRules(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat(`{"a":`, MaxJSONDepth+1) + "1" + strings.Repeat("}", MaxJSONDepth+1)
	cases := []struct {
		name  string
		mod   func(*Event)
		field string
	}{
		{"id not uuid", func(e *Event) { e.ID = "nope" }, "id"},
		{"id uuid without dashes", func(e *Event) { e.ID = "01936a5e7c1f7b3a9d0e2f5c1a9b8e77" }, "id"},
		{"workspace missing", func(e *Event) { e.WorkspaceID = "" }, "workspace_id"},
		{"workspace bad char", func(e *Event) { e.WorkspaceID = "ws acme" }, "workspace_id"},
		{"workspace too long", func(e *Event) { e.WorkspaceID = strings.Repeat("w", 65) }, "workspace_id"},
		{"occurred in future", func(e *Event) { e.OccurredAt = testNow.Add(6 * time.Minute) }, "occurred_at"},
		{"occurred before retention", func(e *Event) { e.OccurredAt = testNow.AddDate(0, 0, -366) }, "occurred_at"},
		{"action missing", func(e *Event) { e.Action = "" }, "action"},
		{"action one word", func(e *Event) { e.Action = "update" }, "action"},
		{"action uppercase", func(e *Event) { e.Action = "Ticket.update" }, "action"},
		{"action empty word", func(e *Event) { e.Action = "ticket..update" }, "action"},
		{"action trailing dot", func(e *Event) { e.Action = "ticket.update." }, "action"},
		{"action too long", func(e *Event) { e.Action = "a." + strings.Repeat("b", 127) }, "action"},
		{"actor type missing", func(e *Event) { e.Actor.Type = "" }, "actor.type"},
		{"actor type unknown", func(e *Event) { e.Actor.Type = "robot" }, "actor.type"},
		{"user without id or email", func(e *Event) { e.Actor = Actor{Type: "user", Name: "x"} }, "actor"},
		{"email without at", func(e *Event) { e.Actor.Email = "alice.acme.io" }, "actor.email"},
		{"email two ats", func(e *Event) { e.Actor.Email = "a@b@c" }, "actor.email"},
		{"email too long", func(e *Event) { e.Actor.Email = strings.Repeat("a", 250) + "@b.io" }, "actor.email"},
		{"actor id too long", func(e *Event) { e.Actor.ID = strings.Repeat("i", 129) }, "actor.id"},
		{"actor name too long", func(e *Event) { e.Actor.Name = strings.Repeat("n", 257) }, "actor.name"},
		{"actor name NUL", func(e *Event) { e.Actor.Name = "a\x00b" }, "actor.name"},
		{"actor name bad utf8", func(e *Event) { e.Actor.Name = "a\xffb" }, "actor.name"},
		{"resource type bad", func(e *Event) { e.Resource.Type = "Ticket" }, "resource.type"},
		{"resource type dotted", func(e *Event) { e.Resource.Type = "a.b" }, "resource.type"},
		{"resource id key bad", func(e *Event) { e.Resource.IDs = map[string]any{"Ticket": "x"} }, "resource.ids"},
		{"resource id key too long", func(e *Event) { e.Resource.IDs = map[string]any{strings.Repeat("k", 65): "x"} }, "resource.ids"},
		{"resource id value object", func(e *Event) { e.Resource.IDs = map[string]any{"t": map[string]any{}} }, "resource.ids.t"},
		{"resource id value bool", func(e *Event) { e.Resource.IDs = map[string]any{"t": true} }, "resource.ids.t"},
		{"resource id nested array", func(e *Event) { e.Resource.IDs = map[string]any{"t": []any{[]any{"x"}}} }, "resource.ids.t"},
		{"resource id value NUL", func(e *Event) { e.Resource.IDs = map[string]any{"t": "a\x00"} }, "resource.ids.t"},
		{"source missing", func(e *Event) { e.Source = "" }, "source"},
		{"source bad char", func(e *Event) { e.Source = "web-app" }, "source"},
		{"source too long", func(e *Event) { e.Source = strings.Repeat("s", 33) }, "source"},
		{"ip garbage", func(e *Event) { e.IP = "203.0.113" }, "ip"},
		{"ip with port", func(e *Event) { e.IP = "203.0.113.7:443" }, "ip"},
		{"ip with zone", func(e *Event) { e.IP = "fe80::1%eth0" }, "ip"},
		{"user agent NUL", func(e *Event) { e.UserAgent = "x\x00" }, "user_agent"},
		{"request id bad utf8", func(e *Event) { e.RequestID = "\xc3" }, "request_id"},
		{"details array", func(e *Event) { e.Details = json.RawMessage(`[1,2]`) }, "details"},
		{"details scalar", func(e *Event) { e.Details = json.RawMessage(`"x"`) }, "details"},
		{"details string value", func(e *Event) { e.Details = "{}" }, "details"},
		{"details invalid json", func(e *Event) { e.Details = json.RawMessage(`{"a":}`) }, "details"},
		{"details duplicate key", func(e *Event) { e.Details = json.RawMessage(`{"a":1,"a":2}`) }, "details"},
		{"details too deep", func(e *Event) { e.Details = json.RawMessage(deep) }, "details"},
		{"details too large", func(e *Event) { e.Details = map[string]string{"x": strings.Repeat("y", 32768)} }, "details"},
		{"details huge number", func(e *Event) { e.Details = json.RawMessage(`{"n":1e400}`) }, "details"},
		{"details trailing", func(e *Event) { e.Details = json.RawMessage(`{} {}`) }, "details"},
		{"details lone surrogate", func(e *Event) { e.Details = json.RawMessage(`{"a":"\ud83d"}`) }, "details"},
		{"details bad utf8", func(e *Event) { e.Details = json.RawMessage("{\"a\":\"\xff\"}") }, "details"},
	}
	r := testRecorder(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := validEvent()
			tc.mod(&e)
			_, err := r.normalise(e, testNow)
			require.Error(t, err)
			ve, ok := AsValidationError(err)
			require.True(t, ok, "want a ValidationError, got %v", err)
			require.Equal(t, tc.field, ve.Field, ve.Error())
		})
	}
}

func TestNormaliseForms(t *testing.T) {
	t.Parallel()
	r := testRecorder(t)
	e := validEvent()
	e.ID = "01936A5E-7C1F-7B3A-9D0E-2F5C1A9B8E77"
	e.OccurredAt = time.Date(2026, 11, 25, 21, 30, 25, 999999999, time.FixedZone("CET", 3600))
	e.Actor = Actor{Type: "user", Email: "  Alice@ACME.io ", Name: "  Alice  "}
	e.Source = " Web "
	e.IP = "::ffff:203.0.113.7"
	e.UserAgent = strings.Repeat("é", 300) // 600 bytes
	e.RequestID = strings.Repeat("r", 200)
	e.Resource.IDs = map[string]any{"ticket": []any{"t_2", "t_1", "t_2"}, "n": json.Number("12345678901234567890"), "f": 1.5, "odd": "a;b=c,d%"}
	e.Details = json.RawMessage(`{ "b": 1, "a": {"d": [3, 2], "c": "é\u00e9"} }`)
	w, err := r.normalise(e, testNow)
	require.NoError(t, err)
	require.Equal(t, "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77", w.id.String())
	require.Equal(t, "2026-11-25T20:30:25.999Z", FormatTime(w.occurredAt))
	require.Equal(t, "alice@acme.io", *w.actorEmail)
	require.Equal(t, "Alice", *w.actorName)
	require.Nil(t, w.actorID)
	require.Equal(t, "web", w.source)
	require.Equal(t, "203.0.113.7", w.ip.String(), "IPv4-mapped IPv6 becomes IPv4")
	require.Len(t, *w.userAgent, 512)
	require.Equal(t, strings.Repeat("é", 256), *w.userAgent, "cut at a UTF-8 boundary")
	require.Len(t, *w.requestID, 128)
	require.Equal(t, "f=1.5;n=12345678901234567890;odd=a%3Bb%3Dc%2Cd%25;ticket=t_1,t_2", w.resourceIDsFlat)
	require.Equal(t, `{"f":"1.5","n":"12345678901234567890","odd":"a;b=c,d%","ticket":["t_1","t_2"]}`, *w.resourceIDs)
	require.Equal(t, `{"a":{"c":"éé","d":[3,2]},"b":1}`, *w.details)

	// The email limit counts characters, as the contract says: 254 of
	// them pass even when they are 2-byte ones.
	e = validEvent()
	e.Actor.Email = strings.Repeat("é", 249) + "@b.io"
	w, err = r.normalise(e, testNow)
	require.NoError(t, err)
	require.Equal(t, 254, utf8.RuneCountInString(*w.actorEmail))
}

func TestNullIPSources(t *testing.T) {
	t.Parallel()
	r := testRecorder(t)
	for _, src := range []string{"slack", "workflow", "system"} {
		e := validEvent()
		e.Source = src
		w, err := r.normalise(e, testNow)
		require.NoError(t, err)
		require.Nil(t, w.ip, src)
	}
	e := validEvent()
	e.IP = ""
	w, err := r.normalise(e, testNow)
	require.NoError(t, err)
	require.Nil(t, w.ip, "no address is null, never a placeholder")

	e = validEvent()
	e.Source, e.IP = "slack", "not-an-ip"
	_, err = r.normalise(e, testNow)
	ve, ok := AsValidationError(err)
	require.True(t, ok, "a bad address is refused even where it would be stored null: %v", err)
	require.Equal(t, "ip", ve.Field)

	custom, err := New(Options{NullIPSources: []string{}, Now: func() time.Time { return testNow }})
	require.NoError(t, err)
	e = validEvent()
	e.Source = "slack"
	w, err = custom.normalise(e, testNow)
	require.NoError(t, err)
	require.NotNil(t, w.ip, "an empty list nulls no source")
}

func TestSameDetailsSameBytes(t *testing.T) {
	t.Parallel()
	a, err := CanonicalObject([]byte(`{"z": [1, 2.0, 1e2], "a": {"y": null, "x": true}, "m": "\u00e9\n"}`))
	require.NoError(t, err)
	b, err := CanonicalObject([]byte("{\"a\":{\"x\":true,\"y\":null},\"m\":\"é\\n\",\"z\":[1,2,100]}"))
	require.NoError(t, err)
	require.Equal(t, string(a), string(b))
	require.Equal(t, `{"a":{"x":true,"y":null},"m":"é\n","z":[1,2,100]}`, string(a))
}

func TestFlattenResourceIDs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		ids  map[string]any
		want string
	}{
		{nil, ""},
		{map[string]any{}, ""},
		{map[string]any{"ticket": []any{"t_2", "t_1"}, "channel": "C0451"}, "channel=C0451;ticket=t_1,t_2"},
		{map[string]any{"b": 2, "a": int64(-7), "c": 0.25}, "a=-7;b=2;c=0.25"},
		{map[string]any{"k": []any{}}, "k="},
		{map[string]any{"k": "100%"}, "k=100%25"},
	}
	for _, tc := range cases {
		got, err := FlattenResourceIDs(tc.ids)
		require.NoError(t, err)
		require.Equal(t, tc.want, got)
	}
}

func TestContextFillsUnsetFields(t *testing.T) {
	t.Parallel()
	r := testRecorder(t)
	ctx := WithActor(context.Background(), Actor{Type: "user", ID: "u_1", Email: "bob@acme.io"})
	ctx = WithRequestInfo(ctx, RequestInfo{WorkspaceID: "ws_ctx", Source: "web", IP: "198.51.100.4", UserAgent: "ua", RequestID: "req_1"})
	e := Event{Action: "member.invite"}
	w, err := r.normalise(fromContext(ctx, e), testNow)
	require.NoError(t, err)
	require.Equal(t, "ws_ctx", w.workspaceID)
	require.Equal(t, "u_1", *w.actorID)
	require.Equal(t, "198.51.100.4", w.ip.String())
	require.Equal(t, "req_1", *w.requestID)

	// Fields set on the event win over the context.
	e = Event{Action: "member.invite", Actor: Actor{Type: "service", ID: "svc"}, Source: "api", WorkspaceID: "ws_own"}
	w, err = r.normalise(fromContext(ctx, e), testNow)
	require.NoError(t, err)
	require.Equal(t, "ws_own", w.workspaceID)
	require.Equal(t, "service", w.actorType)
	require.Equal(t, "api", w.source)
}

func TestCaptureRestore(t *testing.T) {
	t.Parallel()
	ctx := WithActor(context.Background(), Actor{Type: "user", ID: "u_42", Email: "alice@acme.io", Name: "Alice"})
	ctx = WithRequestInfo(ctx, RequestInfo{WorkspaceID: "ws_acme", Source: "web", IP: "203.0.113.7", RequestID: "req_1"})
	data, err := Capture(ctx)
	require.NoError(t, err)

	// Every retry restores the same context from the job payload.
	for attempt := 1; attempt <= 3; attempt++ {
		restored, err := Restore(context.Background(), data)
		require.NoError(t, err)
		a, ok := ActorFrom(restored)
		require.True(t, ok)
		require.Equal(t, "u_42", a.ID)
		info, ok := RequestInfoFrom(restored)
		require.True(t, ok)
		require.Equal(t, "ws_acme", info.WorkspaceID)
	}

	_, err = Restore(context.Background(), []byte(`{"v":99}`))
	require.Error(t, err)
	_, err = Restore(context.Background(), []byte(`not json`))
	require.Error(t, err)
}

func TestDecodeEvent(t *testing.T) {
	t.Parallel()
	body := `{"id":"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77","workspace_id":"ws_acme","occurred_at":"2026-11-25T20:30:25.123Z",
	"action":"ticket.update","actor":{"type":"user","id":"u_42","email":"alice@acme.io","name":"Alice Liddell"},
	"resource":{"type":"ticket","ids":{"ticket":"t_981","n":12345678901234567890}},"source":"web","ip":"203.0.113.7",
	"user_agent":"Mozilla/5.0","request_id":"req_8f2c","details":{"changes":{"status":{"from":"open","to":"closed"}}}}`
	e, err := DecodeEvent([]byte(body))
	require.NoError(t, err)
	require.Equal(t, "ticket.update", e.Action)
	require.Equal(t, "alice@acme.io", e.Actor.Email)
	require.Equal(t, json.Number("12345678901234567890"), e.Resource.IDs["n"])
	w, err := testRecorder(t).normalise(e, testNow)
	require.NoError(t, err)
	require.Equal(t, "2026-11-25T20:30:25.123Z", FormatTime(w.occurredAt))
	require.Equal(t, "n=12345678901234567890;ticket=t_981", w.resourceIDsFlat)

	bad := []struct{ body, field string }{
		{`[]`, "event"},
		{`{"action": 5}`, "action"},
		{`{"actor": "bob"}`, "actor"},
		{`{"actor": {"type": "user", "role": "x"}}`, "actor.role"},
		{`{"resource": {"ids": []}}`, "resource.ids"},
		{`{"resource": {"kind": "x"}}`, "resource.kind"},
		{`{"occurred_at": "2026-11-25 20:30:25"}`, "occurred_at"},
		{`{"occurred_at": "2026-11-25T20:30:25"}`, "occurred_at"},
		{`{"recorded_at": "2026-11-25T20:30:25Z", "recorded_at": null}`, "recorded_at"},
		{`{"action": "a.b", "source": "web", "action": "c.d"}`, "action"},
		{`{"actor": {"type": "user", "id": "a", "id": "b"}}`, "actor.id"},
		{`{"resource": {"type": "t", "type": "u"}}`, "resource.type"},
		{`{"resource": {"ids": {"k": "1", "j": "2", "k": ["3"]}}}`, "resource.ids.k"},
		{`{"details": {"a": 1, "a": 2}}`, "details"},
		{`{"seq": }`, "seq"},
		{`{"seq": "7"}`, "seq"},
		{`{"seq": 1.5}`, "seq"},
		{`{"recorded_at": "garbage"}`, "recorded_at"},
		{`{"recorded_at": 5}`, "recorded_at"},
		{`{"hash": {}}`, "hash"},
		{`{"details": [1]}`, "details"},
		{`{"details": "x"}`, "details"},
		{`{"unknown": 1}`, "unknown"},
		{"{\"action\": \"a\xff.b\"}", "event"},
		{`{"actor": {"type": "user", "name": "\ud800"}}`, "event"},
		{`{"details": {"a": "\udc00x"}}`, "event"},
	}
	for _, tc := range bad {
		_, err := DecodeEvent([]byte(tc.body))
		ve, ok := AsValidationError(err)
		require.True(t, ok, "%s: %v", tc.body, err)
		require.Equal(t, tc.field, ve.Field, tc.body)
	}
}

// TestDecodeEventIgnoresServerFields: the contract's own example event,
// recorded_at included, and an event as GET /v1/events or the ndjson
// export returns it (seq, hash, prev_hash) can be sent as they are; what the
// server sets is ignored.
func TestDecodeEventIgnoresServerFields(t *testing.T) {
	t.Parallel()
	body := `{"id":"01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77","workspace_id":"ws_acme","occurred_at":"2026-11-25T20:30:25.123Z",
	"recorded_at":"2020-01-01T00:00:00.000Z","seq":42,"hash":"ab","prev_hash":null,
	"action":"ticket.update","actor":{"type":"user","id":"u_42"},"source":"web"}`
	e, err := DecodeEvent([]byte(body))
	require.NoError(t, err)
	w, err := testRecorder(t).normalise(e, testNow)
	require.NoError(t, err)
	require.Equal(t, testNow.UTC().Truncate(time.Millisecond), w.recordedAt, "recorded_at is the server's")
}

// TestDecodeEventRefusesRepeatedIDKeys: past the dozen members a slice
// holds, repeated resource id keys are still found.
func TestDecodeEventRefusesRepeatedIDKeys(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`{"resource":{"ids":{`)
	for i := range 40 {
		fmt.Fprintf(&b, `"k%d":"v",`, i)
	}
	b.WriteString(`"k31":"again"}}}`)
	_, err := DecodeEvent([]byte(b.String()))
	ve, ok := AsValidationError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, "resource.ids.k31", ve.Field)
}

func TestLoneSurrogate(t *testing.T) {
	t.Parallel()
	cases := map[string]bool{
		`{"a":"\ud83d\ude00"}`: false,
		`{"a":"\\ud800"}`:      false, // an escaped backslash, then text
		`{"a":"\\\ud800"}`:     true,
		`{"a":"\ud800"}`:       true,
		`{"a":"\udc00"}`:       true,
		`{"a":"\ud800\u0041"}`: true,
		`{"a":"\u00e9"}`:       false,
	}
	for in, want := range cases {
		require.Equal(t, want, hasLoneSurrogate([]byte(in)), in)
	}
}

// The examples of RFC 8785 §3.2.3 (sorting) and Appendix B-style values.
func TestCanonicalRFC8785Examples(t *testing.T) {
	t.Parallel()
	in := `{
	  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
	  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
	  "literals": [null, true, false]
	}`
	out, err := CanonicalObject([]byte(in))
	require.NoError(t, err)
	require.Equal(t, `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`, string(out))

	sorting := `{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One",
	  "\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`
	out, err = CanonicalObject([]byte(sorting))
	require.NoError(t, err)
	require.Equal(t, "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\","+
		"\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"דּ\":\"Hebrew Letter Dalet With Dagesh\"}", string(out))
}

// benchEvents builds n varied events shaped like the pipeline bench's
// (app/bench/gen.go, (*genEvent).event): a caller-supplied UUIDv7, an
// occurred_at in the last month, an actor with id, email and name, two or
// three resource ids, and a few hundred bytes of canonical JSON details.
func benchEvents(n int, now time.Time) []Event {
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := []struct {
		action, resource string
		keys             []string
	}{
		{"ticket.update", "ticket", []string{"channel", "ticket"}},
		{"ticket.create", "ticket", []string{"channel", "team", "ticket"}},
		{"ticket.assign", "ticket", []string{"member", "ticket"}},
		{"member.login", "member", []string{"member", "team"}},
		{"automation.run", "automation", []string{"automation", "ticket"}},
		{"setting.update", "setting", []string{"setting", "team"}},
	}
	words := strings.Fields("customer reports that the invoice export fails after upgrade please check billing " +
		"settings for this account and reply urgent login issue on mobile app password reset link expired refund")
	sentence := func(b []byte, lo, hi int) []byte {
		for i := range lo + rng.IntN(hi-lo+1) {
			if i > 0 {
				b = append(b, ' ')
			}
			b = append(b, words[rng.IntN(len(words))]...)
		}
		return b
	}
	es := make([]Event, n)
	for i := range es {
		at := now.Add(-time.Duration(rng.Int64N(int64(30 * 24 * time.Hour)))).Truncate(time.Millisecond)
		var id uuid.UUID
		ms := uint64(at.UnixMilli())
		for j := range 6 {
			id[j] = byte(ms >> (40 - 8*j))
		}
		for j := 6; j < 16; j++ {
			id[j] = byte(rng.Uint32())
		}
		id[6], id[8] = 0x70|id[6]&0x0f, 0x80|id[8]&0x3f
		ws := "ws_" + strconv.Itoa(rng.IntN(20))
		k := kinds[rng.IntN(len(kinds))]
		ids := make(map[string]any, len(k.keys))
		for _, key := range k.keys {
			ids[key] = key[:1] + "_" + strconv.Itoa(rng.IntN(1_000_000))
		}
		e := Event{
			ID: id.String(), WorkspaceID: ws, OccurredAt: at, Action: k.action,
			Resource: Resource{Type: k.resource, IDs: ids},
		}
		switch u := rng.IntN(200); rng.IntN(10) {
		case 0:
			e.Actor = Actor{Type: ActorService, ID: "svc_billing", Name: "billing"}
			e.Source = "workflow"
		case 1:
			e.Actor = Actor{Type: ActorAPIKey, ID: "key_" + strconv.Itoa(u%5), Name: "integration"}
			e.Source = "api"
			e.IP = netip.AddrFrom4([4]byte{10, byte(u), 7, 1}).String()
			e.UserAgent = "acme-sync/2.3.1 (+https://acme.example/bot)"
			e.RequestID = "req_" + strconv.FormatUint(rng.Uint64()|1<<63, 16)
		case 2:
			e.Actor = Actor{Type: ActorUser, ID: "u_" + strconv.Itoa(u), Email: "user" + strconv.Itoa(u) + "@" + ws + ".example", Name: "User Liddell"}
			e.Source = "slack"
			e.UserAgent = "Slackbot 1.0 (+https://api.slack.com/robots)"
			e.RequestID = "req_" + strconv.FormatUint(rng.Uint64()|1<<63, 16)
		default:
			e.Actor = Actor{Type: ActorUser, ID: "u_" + strconv.Itoa(u), Email: "user" + strconv.Itoa(u) + "@" + ws + ".example", Name: "User Liddell"}
			e.Source = "web"
			e.IP = netip.AddrFrom4([4]byte{203, 0, byte(u), byte(1 + rng.IntN(254))}).String()
			e.UserAgent = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
			e.RequestID = "req_" + strconv.FormatUint(rng.Uint64()|1<<63, 16)
		}
		b := []byte(`{"changes":{"status":{"from":"open","to":"closed"},"subject":{"from":"`)
		b = sentence(b, 4, 10)
		b = append(b, `","to":"`...)
		b = sentence(b, 4, 10)
		b = append(b, `"},"tags":{"from":["billing"],"to":["billing","vip"]}},"client":{"app_version":"4.`...)
		b = strconv.AppendInt(b, int64(rng.IntN(20)), 10)
		b = append(b, `.0","locale":"en-GB","platform":"`...)
		b = append(b, e.Source...)
		b = append(b, `"},"note":"`...)
		b = sentence(b, 8, 24)
		b = append(b, `","ticket_number":`...)
		b = strconv.AppendInt(b, int64(1000+rng.IntN(900_000)), 10)
		e.Details = json.RawMessage(append(b, '}'))
		es[i] = e
	}
	return es
}

// BenchmarkNormaliseEvent measures normalisation alone (no JSON decoding)
// of bench-shaped events, one event per op: the per-event work RecordBatch
// does before its COPY.
func BenchmarkNormaliseEvent(b *testing.B) {
	r, err := New(Options{Now: func() time.Time { return testNow }})
	require.NoError(b, err)
	es := benchEvents(1000, testNow)
	for i := range es {
		_, err := r.normalise(es[i], testNow)
		require.NoError(b, err, "event %d", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := r.normalise(es[i], testNow); err != nil {
			b.Fatal(err)
		}
		if i++; i == len(es) {
			i = 0
		}
	}
}

// BenchmarkNormaliseAll measures RecordBatch's normalisation of a batch of
// bench-shaped events: 500 on one goroutine, 1000 split across GOMAXPROCS
// (normaliseAll). ns/event is the wall time per event.
func BenchmarkNormaliseAll(b *testing.B) {
	r, err := New(Options{Now: func() time.Time { return testNow }})
	require.NoError(b, err)
	all := benchEvents(1000, testNow)
	ctx := context.Background()
	for _, n := range []int{500, 1000} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) {
			es := all[:n]
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.normaliseAll(ctx, es); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
		})
	}
}

// normaliseAll stores what normalise does, event by event, on one
// goroutine or several, with the rows' values shared per batch.
func TestNormaliseAllMatchesNormalise(t *testing.T) {
	t.Parallel()
	r := testRecorder(t)
	es := benchEvents(1200, testNow)
	es[7].Details = json.RawMessage(` {"b": 1, "a": [1.50, "\u00e9"]} `) // not canonical
	es[8].Resource.IDs = map[string]any{"t": []any{"b", 2, "a", "b"}, "odd": "a;b"}
	es[9].Actor.Email = " Bob@Example.COM "
	for _, n := range []int{100, len(es)} { // sequential, then split
		rows, err := r.normaliseAll(context.Background(), es[:n])
		require.NoError(t, err)
		for i := range n {
			w, err := r.normalise(es[i], testNow)
			require.NoError(t, err)
			require.Equal(t, rowStrings(w), rowStrings(rows[i]), "event %d", i)
		}
	}
	bad := slices.Clone(es)
	bad[700].Actor.Email = "no-at"
	bad[900].Action = "x"
	_, err := r.normaliseAll(context.Background(), bad)
	ve, ok := AsValidationError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, 700, ve.Index, "the first invalid event is reported")
	require.Equal(t, "actor.email", ve.Field)
}

// The retention window starts exactly the configured number of days before
// the recording time, however long it is.
func TestRetentionBoundary(t *testing.T) {
	t.Parallel()
	now := testNow.Truncate(time.Millisecond)
	for _, days := range []int{1, 365, 200_000} { // the last beyond a time.Duration
		r, err := New(Options{RetentionDays: days, Now: func() time.Time { return testNow }})
		require.NoError(t, err)
		e := validEvent()
		e.OccurredAt = now.AddDate(0, 0, -days)
		_, err = r.normalise(e, testNow)
		require.NoError(t, err, "%d days: the first instant of the window", days)
		e.OccurredAt = e.OccurredAt.Add(-time.Millisecond)
		_, err = r.normalise(e, testNow)
		ve, ok := AsValidationError(err)
		require.True(t, ok, "%d days: %v", days, err)
		require.Equal(t, "occurred_at", ve.Field)
	}
}

// TestParseTimestamp: RFC 3339 with an offset; §5.6 allows a lower-case
// "t" and "z".
func TestParseTimestamp(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 11, 25, 20, 30, 25, 123000000, time.UTC)
	for _, s := range []string{"2026-11-25T20:30:25.123Z", "2026-11-25t20:30:25.123z", "2026-11-25t21:30:25.123+01:00"} {
		got, err := ParseTimestamp(s)
		require.NoError(t, err, s)
		require.True(t, want.Equal(got), s)
	}
	for _, s := range []string{"", "2026-11-25", "2026-11-25 20:30:25Z", "2026-11-25T20:30:25", "2026-11-25x20:30:25Z", "z", "2026-11-25T20:30:25y"} {
		_, err := ParseTimestamp(s)
		require.Error(t, err, s)
	}
}
