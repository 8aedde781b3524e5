package outbox

import (
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"
)

// DecodeEvent parses one event in the contract's JSON shape, strictly:
// unknown fields, members given twice, wrong types and invalid UTF-8 are
// refused with a *ValidationError naming the field. The fields the server
// sets (recorded_at, and seq, hash and prev_hash of an event read back) are
// accepted and ignored when of the shape the API gives them. It does not normalise;
// recording does.
func DecodeEvent(data []byte) (Event, error) {
	if !utf8.Valid(data) {
		return Event{}, invalid("event", "is not valid UTF-8")
	}
	if hasLoneSurrogate(data) {
		return Event{}, invalid("event", "has an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
	}
	e, n, err := DecodeEventFrom(data)
	if err != nil {
		return Event{}, err
	}
	d := eventDecoder{jcsParser{s: data, i: n}}
	d.skipSpace()
	if d.i != len(data) {
		return Event{}, invalid("event", "must be a single JSON object; found more after it at byte %d", d.i)
	}
	return e, nil
}

// DecodeEventFrom parses the event object at the start of data (after any
// whitespace) as DecodeEvent does, and returns the number of bytes up to the
// end of the object; what follows is the caller's (a ',' in a batch). data
// must be valid UTF-8, which the caller checks once for a whole body.
//
// It reads the event in one pass straight into an Event: each field is
// parsed as the type it must have, details are checked to be one JSON
// object (and copied as they are when already canonical, else
// canonicalised here), so an ingested body is scanned once rather than
// decoded into generic maps and again into each field.
func DecodeEventFrom(data []byte) (Event, int, error) {
	d := eventDecoder{jcsParser{s: data}}
	e, err := d.event()
	if err != nil {
		return Event{}, 0, err
	}
	return e, d.i, nil
}

// eventDecoder parses events on top of the canonicaliser's scanner.
type eventDecoder struct{ jcsParser }

// syntax turns a scanner error into the error of field (the event itself
// for a malformed document).
func (d *eventDecoder) syntax(err error) error {
	if errors.Is(err, errLoneSurrogate) {
		return invalid("event", "has an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
	}
	return invalid("event", "%v", err)
}

// peek skips whitespace and returns the next byte, 0 at the end.
func (d *eventDecoder) peek() byte {
	d.skipSpace()
	if d.i >= len(d.s) {
		return 0
	}
	return d.s[d.i]
}

// null consumes a JSON null if one is next.
func (d *eventDecoder) null() bool {
	if d.peek() == 'n' && len(d.s)-d.i >= 4 && string(d.s[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// members calls fn for each member of the object at d.i (its '{' already
// checked by the caller), with fn parsing the value. A member given twice
// is refused as prefix+key: parsers disagree on which value wins (first or
// last), so a proxy validating one could store another.
func (d *eventDecoder) members(prefix string, fn func(key string) error) error {
	d.i++ // '{'
	if d.peek() == '}' {
		d.i++
		return nil
	}
	var seen memberSet
	for {
		if d.peek() != '"' {
			return d.syntax(d.errorf("expected a member name"))
		}
		key, err := d.str()
		if err != nil {
			return d.syntax(err)
		}
		if d.peek() != ':' {
			return d.syntax(d.errorf("expected ':'"))
		}
		d.i++
		if seen.add(key) {
			return invalid(prefix+key, "is given more than once")
		}
		if err := fn(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return d.syntax(d.errorf("expected ',' or '}'"))
		}
	}
}

// memberSet is the member names of one object read so far. Objects here
// have a dozen members at most, which a slice searches fastest; an object
// with many (resource ids) switches to a map, so a hostile one of 100,000
// members costs no quadratic time.
type memberSet struct {
	small [12]string
	n     int
	big   map[string]struct{}
}

// add adds key and reports whether it was there already.
func (m *memberSet) add(key string) bool {
	if m.big != nil {
		if _, dup := m.big[key]; dup {
			return true
		}
		m.big[key] = struct{}{}
		return false
	}
	for _, k := range m.small[:m.n] {
		if k == key {
			return true
		}
	}
	if m.n < len(m.small) {
		m.small[m.n] = key
		m.n++
		return false
	}
	m.big = make(map[string]struct{}, 2*len(m.small))
	for _, k := range m.small {
		m.big[k] = struct{}{}
	}
	m.big[key] = struct{}{}
	return false
}

// stringOrNull reads a JSON string, or null (empty), into dst.
func (d *eventDecoder) stringOrNull(field string, dst *string) error {
	if d.null() {
		*dst = ""
		return nil
	}
	if d.peek() != '"' {
		return invalid(field, "must be a string")
	}
	s, err := d.str()
	if err != nil {
		return d.syntax(err)
	}
	*dst = s
	return nil
}

// objectOrNull consumes a null and reports false, reports true with the
// cursor on an object, and refuses any other value as field with msg.
func (d *eventDecoder) objectOrNull(field, msg string) (bool, error) {
	if d.null() {
		return false, nil
	}
	if d.peek() != '{' {
		return false, invalid(field, "%s", msg)
	}
	return true, nil
}

func (d *eventDecoder) event() (Event, error) {
	var e Event
	if d.peek() != '{' {
		return e, invalid("event", "must be a JSON object")
	}
	err := d.members("", func(key string) error {
		switch key {
		case "id":
			return d.stringOrNull(key, &e.ID)
		case "workspace_id":
			return d.stringOrNull(key, &e.WorkspaceID)
		case "occurred_at":
			var s string
			e.OccurredAt = time.Time{}
			if err := d.stringOrNull(key, &s); err != nil || s == "" {
				return err
			}
			t, err := ParseTimestamp(s)
			if err != nil {
				return invalid(key, "must be an RFC 3339 timestamp with an offset")
			}
			e.OccurredAt = t
			return nil
		case "recorded_at", "seq", "hash", "prev_hash":
			return d.serverField(key)
		case "action":
			return d.stringOrNull(key, &e.Action)
		case "actor":
			return d.actor(&e.Actor)
		case "resource":
			return d.resource(&e.Resource)
		case "source":
			return d.stringOrNull(key, &e.Source)
		case "ip":
			return d.stringOrNull(key, &e.IP)
		case "user_agent":
			return d.stringOrNull(key, &e.UserAgent)
		case "request_id":
			return d.stringOrNull(key, &e.RequestID)
		case "details":
			return d.details(&e)
		}
		return invalid(key, "is not a field of an event")
	})
	return e, err
}

// serverField reads a field the server sets, as the API returns it:
// recorded_at (a timestamp), seq (an integer), hash and prev_hash
// (strings). Accepted so that the contract's example and an event read back
// can be sent as they are, and ignored; a value of another shape is
// refused, as anything malformed is.
func (d *eventDecoder) serverField(key string) error {
	if d.null() {
		return nil
	}
	if key == "seq" {
		if c := d.peek(); c == '-' || (c >= '0' && c <= '9') {
			lit, err := d.numberLiteral()
			if err != nil {
				return d.syntax(err)
			}
			if isIntegerLiteral(lit) {
				return nil
			}
		}
		return invalid(key, "is set by the server and ignored; when sent, it must be an integer")
	}
	var s string
	if err := d.stringOrNull(key, &s); err != nil {
		return invalid(key, "is set by the server and ignored; when sent, it must be a string")
	}
	if key == "recorded_at" {
		if _, err := ParseTimestamp(s); err != nil {
			return invalid(key, "is set by the server and ignored; when sent, it must be an RFC 3339 timestamp")
		}
	}
	return nil
}

func (d *eventDecoder) actor(a *Actor) error {
	*a = Actor{}
	if ok, err := d.objectOrNull("actor", "must be an object"); !ok {
		return err
	}
	return d.members("actor.", func(key string) error {
		field := "actor." + key
		switch key {
		case "type":
			return d.stringOrNull(field, &a.Type)
		case "id":
			return d.stringOrNull(field, &a.ID)
		case "email":
			return d.stringOrNull(field, &a.Email)
		case "name":
			return d.stringOrNull(field, &a.Name)
		}
		return invalid(field, "is not a field of actor")
	})
}

func (d *eventDecoder) resource(r *Resource) error {
	*r = Resource{}
	if ok, err := d.objectOrNull("resource", "must be an object"); !ok {
		return err
	}
	return d.members("resource.", func(key string) error {
		switch key {
		case "type":
			return d.stringOrNull("resource.type", &r.Type)
		case "ids":
			return d.ids(r)
		}
		return invalid("resource."+key, "is not a field of resource")
	})
}

// ids reads resource.ids: each value a string, a number (kept as its
// json.Number literal, so every digit survives) or an array of those.
// Anything else is refused here with the message normalisation would give.
func (d *eventDecoder) ids(r *Resource) error {
	r.IDs = nil
	if ok, err := d.objectOrNull("resource.ids", "must be an object"); !ok {
		return err
	}
	ids := map[string]any{}
	err := d.members("resource.ids.", func(key string) error {
		if d.peek() != '[' {
			v, err := d.idScalar(key)
			if err != nil {
				return err
			}
			ids[key] = v
			return nil
		}
		d.i++ // '['
		list := []any{}
		if d.peek() == ']' {
			d.i++
			ids[key] = list
			return nil
		}
		for {
			v, err := d.idScalar(key)
			if err != nil {
				return err
			}
			list = append(list, v)
			switch d.peek() {
			case ',':
				d.i++
			case ']':
				d.i++
				ids[key] = list
				return nil
			default:
				return d.syntax(d.errorf("expected ',' or ']'"))
			}
		}
	})
	if err != nil {
		return err
	}
	r.IDs = ids
	return nil
}

// idScalar reads one resource id value: a string or a number.
func (d *eventDecoder) idScalar(key string) (any, error) {
	switch c := d.peek(); {
	case c == '"':
		s, err := d.str()
		if err != nil {
			return nil, d.syntax(err)
		}
		return s, nil
	case c == '-' || (c >= '0' && c <= '9'):
		lit, err := d.numberLiteral()
		if err != nil {
			return nil, d.syntax(err)
		}
		return json.Number(lit), nil
	}
	return nil, invalid("resource.ids."+key, "must be a string, a number or an array of those")
}

// numberLiteral reads a JSON number and returns it as written.
func (d *eventDecoder) numberLiteral() (string, error) {
	start := d.i
	digits := func() int {
		n := 0
		for d.i < len(d.s) && d.s[d.i] >= '0' && d.s[d.i] <= '9' {
			d.i++
			n++
		}
		return n
	}
	if d.s[d.i] == '-' {
		d.i++
	}
	if d.i < len(d.s) && d.s[d.i] == '0' {
		d.i++
	} else if digits() == 0 {
		return "", d.errorf("bad number")
	}
	if d.i < len(d.s) && d.s[d.i] == '.' {
		d.i++
		if digits() == 0 {
			return "", d.errorf("bad number")
		}
	}
	if d.i < len(d.s) && (d.s[d.i] == 'e' || d.s[d.i] == 'E') {
		d.i++
		if d.i < len(d.s) && (d.s[d.i] == '+' || d.s[d.i] == '-') {
			d.i++
		}
		if digits() == 0 {
			return "", d.errorf("bad number")
		}
	}
	return string(d.s[start:d.i]), nil
}

// details reads the details object. Already-canonical details (the common
// case) are checked without allocating and copied as they are; others are
// canonicalised here, in the same pass, so recording only re-checks them.
func (d *eventDecoder) details(e *Event) error {
	e.Details = nil
	if ok, err := d.objectOrNull("details", "must be a JSON object"); !ok {
		return err
	}
	start := d.i
	c := canonChecker{s: d.s, i: start}
	if c.value() {
		// A copy: data may be a reused line buffer (NDJSON).
		e.Details = json.RawMessage(append([]byte(nil), d.s[start:c.i]...))
		d.i = c.i
		return nil
	}
	canon, err := d.value(nil)
	if err != nil {
		if errors.Is(err, errLoneSurrogate) {
			return d.syntax(err)
		}
		return invalid("details", "%v", err)
	}
	e.Details = json.RawMessage(canon)
	return nil
}
