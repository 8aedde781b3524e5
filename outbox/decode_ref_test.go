package outbox

// The decoder DecodeEvent replaced (a generic encoding/json decode of the
// object, then of each field), kept verbatim as the fuzzing oracle: whatever
// body it and normalisation accept, the single-pass decoder must accept with
// the same stored row, and the other way round.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// referenceDecodeEvent is the former DecodeEvent.
func referenceDecodeEvent(data []byte) (Event, error) {
	var e Event
	if !utf8.Valid(data) {
		return e, invalid("event", "is not valid UTF-8")
	}
	if hasLoneSurrogate(data) {
		return e, invalid("event", "has an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
	}
	var fields map[string]json.RawMessage
	if err := refStrictUnmarshal(data, &fields); err != nil || fields == nil {
		return e, invalid("event", "must be a JSON object")
	}
	for name, raw := range fields {
		var err error
		switch name {
		case "id":
			err = refDecodeString(raw, &e.ID)
		case "workspace_id":
			err = refDecodeString(raw, &e.WorkspaceID)
		case "occurred_at":
			var s string
			if err = refDecodeString(raw, &s); err == nil && s != "" {
				e.OccurredAt, err = ParseTimestamp(s) // the lower-case t and z of RFC 3339 §5.6 are newer
				if err != nil {
					err = errors.New("must be an RFC 3339 timestamp with an offset")
				}
			}
		case "recorded_at", "seq", "hash", "prev_hash":
			// Set by the server: ignored, when of the shape the API
			// returns (a timestamp, an integer, strings).
			err = refServerField(name, raw)
		case "action":
			err = refDecodeString(raw, &e.Action)
		case "actor":
			var a map[string]json.RawMessage
			if refIsNull(raw) {
				break
			}
			if refStrictUnmarshal(raw, &a) != nil || a == nil {
				err = errors.New("must be an object")
				break
			}
			for k, v := range a {
				var ferr error
				switch k {
				case "type":
					ferr = refDecodeString(v, &e.Actor.Type)
				case "id":
					ferr = refDecodeString(v, &e.Actor.ID)
				case "email":
					ferr = refDecodeString(v, &e.Actor.Email)
				case "name":
					ferr = refDecodeString(v, &e.Actor.Name)
				default:
					ferr = errors.New("is not a field of actor")
				}
				if ferr != nil {
					return e, invalid("actor."+k, "%v", ferr)
				}
			}
		case "resource":
			if refIsNull(raw) {
				break
			}
			var r map[string]json.RawMessage
			if refStrictUnmarshal(raw, &r) != nil || r == nil {
				err = errors.New("must be an object")
				break
			}
			for k, v := range r {
				var ferr error
				switch k {
				case "type":
					ferr = refDecodeString(v, &e.Resource.Type)
				case "ids":
					if refIsNull(v) {
						break
					}
					var ids map[string]any
					if refStrictUnmarshal(v, &ids) != nil || ids == nil {
						ferr = errors.New("must be an object")
						break
					}
					e.Resource.IDs = ids
				default:
					ferr = errors.New("is not a field of resource")
				}
				if ferr != nil {
					return e, invalid("resource."+k, "%v", ferr)
				}
			}
		case "source":
			err = refDecodeString(raw, &e.Source)
		case "ip":
			err = refDecodeString(raw, &e.IP)
		case "user_agent":
			err = refDecodeString(raw, &e.UserAgent)
		case "request_id":
			err = refDecodeString(raw, &e.RequestID)
		case "details":
			if refIsNull(raw) {
				break
			}
			if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
				err = errors.New("must be a JSON object")
				break
			}
			e.Details = json.RawMessage(raw)
		default:
			err = errors.New("is not a field of an event")
		}
		if err != nil {
			return e, invalid(name, "%v", err)
		}
	}
	return e, nil
}

// strictUnmarshal decodes with numbers kept as json.Number, so resource ids
// keep every digit.
func refStrictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

func refIsNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// decodeString accepts a JSON string or null (left empty).
func refDecodeString(raw json.RawMessage, dst *string) error {
	if refIsNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("must be a string")
	}
	return nil
}

// refServerField checks a server-set field's shape with encoding/json.
func refServerField(name string, raw json.RawMessage) error {
	if refIsNull(raw) {
		return nil
	}
	if name == "seq" {
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if dec.Decode(&n) != nil || !isIntegerLiteral(n.String()) {
			return errors.New("must be an integer")
		}
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return errors.New("must be a string")
	}
	if name == "recorded_at" {
		if _, err := ParseTimestamp(s); err != nil {
			return errors.New("must be an RFC 3339 timestamp")
		}
	}
	return nil
}
