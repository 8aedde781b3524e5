package outbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// FuzzDecodeNormalise feeds arbitrary bodies through the ingest decoder and
// the normaliser. Whatever the input: no panic, an error is a
// *ValidationError, and an accepted event's stored forms are canonical
// (re-canonicalising them changes nothing) and valid UTF-8.
func FuzzDecodeNormalise(f *testing.F) {
	f.Add([]byte(`{"workspace_id":"ws_acme","action":"ticket.update","actor":{"type":"user","id":"u_42"},"source":"web"}`))
	f.Add([]byte(`{"workspace_id":"w","action":"a.b","actor":{"type":"system"},"source":"slack","ip":"::ffff:1.2.3.4","details":{"b":[1,2,{"c":null}],"a":"\u00e9"}}`))
	f.Add([]byte(`{"workspace_id":"w","action":"a.b","actor":{"type":"user","email":" X@Y.Z "},"source":"api","resource":{"type":"t","ids":{"k":[3,"3",1e2,"a;b"]}}}`))
	f.Add([]byte(`{"occurred_at":"2026-11-25T20:30:25.123+01:00","details":{"n":1e400}}`))
	f.Add([]byte(`{"details":{"a":1,"a":2}}`))
	f.Add([]byte("{\"action\":\"\x00\"}"))
	f.Add([]byte(`null`))
	r, err := New(Options{Now: func() time.Time { return testNow }})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"actor":{"type":"user","id":"a"},"actor":{"type":"system"},"action":null,"details":{"b":1,"a":[1.50,"\/"]}}`))
	f.Add([]byte(`{"resource":{"ids":{"n":[-0,1e2,12345678901234567890,"x"],"m":1.5e-3}},"details":{"a":{"a":{"a":1}}}}`))
	f.Add([]byte(`{"details":{"\u00e9":"\u001f","e":1e400}}`))
	f.Add([]byte(`{"action":"a.b","source":"web","actor":{"type":"system"},"action":"c.d"}`))
	f.Add([]byte(`{"recorded_at":"2020-01-01T00:00:00Z","seq":1,"hash":"x","prev_hash":null,"action":"a.b","source":"web","actor":{"type":"system"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		// Differential: the single-pass decoder and the generic one it
		// replaced agree on what decoding plus normalisation accepts, and
		// on the stored row.
		ref, refErr := referenceDecodeEvent(body)
		// The old decoder's trailing-data check (json.Decoder.More) let a
		// stray '}' or ']' after the object through; the new one refuses
		// what is not one JSON value (testdata de32b3a26ec19bf4).
		if refErr == nil && !json.Valid(body) {
			refErr = errors.New("not one JSON value")
		}
		// encoding/json lets the last of a repeated member win; the
		// decoder refuses repeated members.
		if refErr == nil && hasRepeatedMember(body) {
			refErr = errors.New("a member given twice")
		}
		var refRow row
		if refErr == nil {
			refRow, refErr = r.normalise(ref, testNow)
		}
		e, err := DecodeEvent(body)
		if err != nil {
			if _, ok := AsValidationError(err); !ok {
				t.Fatalf("decode error is not a ValidationError: %v", err)
			}
			if refErr == nil {
				t.Fatalf("refused %q (%v); the reference decoder accepts it", body, err)
			}
			return
		}
		w, err := r.normalise(e, testNow)
		if err != nil {
			if _, ok := AsValidationError(err); !ok {
				t.Fatalf("normalise error is not a ValidationError: %v", err)
			}
			if refErr == nil {
				t.Fatalf("refused %q (%v); the reference decoder accepts it", body, err)
			}
			return
		}
		if refErr != nil {
			t.Fatalf("accepted %q; the reference decoder refuses it: %v", body, refErr)
		}
		if e.ID == "" {
			w.id, refRow.id = [16]byte{}, [16]byte{} // generated
		}
		if got, want := fmt.Sprint(rowStrings(w)), fmt.Sprint(rowStrings(refRow)); got != want {
			t.Fatalf("stored row differs from the reference for %q:\n got  %s\n want %s", body, got, want)
		}
		for _, s := range []*string{w.details, w.resourceIDs} {
			if s == nil {
				continue
			}
			again, err := CanonicalObject([]byte(*s))
			if err != nil || string(again) != *s {
				t.Fatalf("stored form %q is not canonical: %q %v", *s, again, err)
			}
		}
		for _, s := range []*string{w.actorID, w.actorEmail, w.actorName, w.userAgent, w.requestID, w.details} {
			if s != nil && (!utf8.ValidString(*s) || strings.IndexByte(*s, 0) >= 0) {
				t.Fatalf("stored text %q is not clean UTF-8", *s)
			}
		}
		if w.ip != nil && r.nullIP[w.source] {
			t.Fatalf("source %s must store a null ip", w.source)
		}
	})
}

// FuzzCanonicalObject checks the RFC 8785 canonicaliser differentially
// against github.com/gowebpki/jcs (the reference port): whatever both
// accept must come out byte-identical. It also checks idempotence and that
// accepted input and output parse as JSON.
func FuzzCanonicalObject(f *testing.F) {
	f.Add([]byte(`{"b":1,"a":[true,false,null,"x"]}`))
	f.Add([]byte(`{"n":[1.0,-0,1e21,1e-7,0.1,123456789012345678901234567890]}`))
	f.Add([]byte(`{"\u20ac":"\ud83d\ude00","\u0080":1,"\ufb33":2}`))
	f.Add([]byte(`{"a":{"b":{"c":{}}}}`))
	f.Add([]byte(`{"s":"\u000f\u001f\u007f\b\f\n\r\t\/\"\\"}`))
	f.Add([]byte(" {\t\"a\" : [ 1 , 2 ] } \n"))
	f.Add([]byte(`{"a":"\u001f\n","b":-12,"c":1.5,"d":1e+21,"e":[{}]}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte(`{"\u00e9":1,"e":2}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, err := CanonicalObject(raw)
		// The fast check never calls something canonical that the full
		// path would refuse or change.
		if isCanonicalObject(raw) && (err != nil || string(out) != string(raw)) {
			t.Fatalf("isCanonicalObject accepted %q, canonical form %q (%v)", raw, out, err)
		}
		if err != nil {
			return
		}
		if !isCanonicalObject(out) && canonicalCheckCovers(out) {
			t.Fatalf("isCanonicalObject refused canonical %q", out)
		}
		again, err := CanonicalObject(out)
		if err != nil {
			t.Fatalf("canonical output %q refused: %v", out, err)
		}
		if string(again) != string(out) {
			t.Fatalf("not idempotent: %q -> %q", out, again)
		}
		var a, b any
		if json.Unmarshal(raw, &a) != nil || json.Unmarshal(out, &b) != nil {
			t.Fatalf("accepted input or output does not parse")
		}
		if ref, err := jcs.Transform(raw); err == nil && string(ref) != string(out) {
			t.Fatalf("differs from the reference:\n in  %q\n got %q\n ref %q", raw, out, ref)
		}
		// The direct encoder of Go values (in-app Details maps) agrees too.
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("accepted input does not decode: %v", err)
		}
		direct, err := canonicalFromGo(v)
		if err != nil || string(direct) != string(out) {
			t.Fatalf("Go-value encoder differs: %q vs %q (%v)", direct, out, err)
		}
	})
}

// FuzzFlatten checks flattening is deterministic and reversible enough:
// the flat form never contains an unescaped separator inside a value.
func FuzzFlatten(f *testing.F) {
	f.Add("ticket", "t_1", "t_2")
	f.Add("k", "a;b", "c=d")
	f.Add("k", "%", ",")
	f.Fuzz(func(t *testing.T, key, v1, v2 string) {
		ids := map[string]any{key: []any{v2, v1, v2}}
		flat, err := FlattenResourceIDs(ids)
		if err != nil {
			return
		}
		again, err := FlattenResourceIDs(map[string]any{key: []any{v1, v2}})
		if err != nil || again != flat {
			t.Fatalf("not deterministic: %q vs %q (%v)", flat, again, err)
		}
		if strings.Count(flat, "=") != 1 || strings.Contains(flat, ";") {
			t.Fatalf("separator leaked: %q", flat)
		}
		if v1 != v2 && strings.Count(flat, ",") != 1 {
			t.Fatalf("values not joined by one comma: %q", flat)
		}
	})
}

// canonicalCheckCovers reports whether canonical JSON is of the plain kind
// isCanonicalObject decides by itself (no escaped keys, integers of at most
// 15 digits), so refusing it would be a missed fast path.
func canonicalCheckCovers(canon []byte) bool {
	var v any
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return false
	}
	var plain func(any) bool
	plain = func(v any) bool {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if strings.ContainsAny(k, "\"\\") || !plain(e) {
					return false
				}
				for _, r := range k {
					if r < 0x20 {
						return false
					}
				}
			}
		case []any:
			for _, e := range x {
				if !plain(e) {
					return false
				}
			}
		case json.Number:
			s := strings.TrimPrefix(string(x), "-")
			return len(s) <= 15 && !strings.ContainsAny(s, ".eE")
		}
		return true
	}
	return plain(v)
}

// rowStrings renders every column of w, for comparing rows.
func rowStrings(w row) []string {
	str := func(s *string) string {
		if s == nil {
			return "<nil>"
		}
		return *s
	}
	ip := "<nil>"
	if w.ip != nil {
		ip = w.ip.String()
	}
	return []string{
		w.id.String(), w.workspaceID, w.occurredAt.String(), w.recordedAt.String(), w.action, w.actorType,
		str(w.actorID), str(w.actorEmail), str(w.actorName), str(w.resourceType), str(w.resourceIDs),
		w.resourceIDsFlat, w.source, ip, str(w.userAgent), str(w.requestID), str(w.details),
	}
}

// hasRepeatedMember reports whether some object in the JSON document body
// names a member twice. body must be valid JSON.
func hasRepeatedMember(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	// One frame per open object or array: the object's member names, and
	// whether the next string token is a member name.
	type frame struct {
		names    map[string]bool
		isObject bool
		wantKey  bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.isObject && top.wantKey {
			if name, ok := tok.(string); ok {
				if top.names[name] {
					return true
				}
				top.names[name] = true
				top.wantKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{names: map[string]bool{}, isObject: true, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the enclosing object expects a name next.
		if len(stack) > 0 && stack[len(stack)-1].isObject {
			stack[len(stack)-1].wantKey = true
		}
	}
}
