package outbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// MaxJSONDepth bounds the nesting of details objects; deeper input is refused
// rather than walked.
const MaxJSONDepth = 32

// CanonicalObject checks that raw is one JSON object (valid UTF-8, no
// duplicate keys, nesting at most MaxJSONDepth, numbers representable as
// IEEE doubles) and returns its RFC 8785 canonical form. The same logical
// object always yields the same bytes.
func CanonicalObject(raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("is not valid UTF-8")
	}
	if hasLoneSurrogate(raw) {
		return nil, errors.New("has an unpaired UTF-16 surrogate escape")
	}
	if err := checkJSON(raw); err != nil {
		return nil, err
	}
	out, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("cannot be canonicalised: %w", err)
	}
	return out, nil
}

// checkJSON walks raw token by token: it must be exactly one object, with no
// duplicate keys at any level and bounded depth. RFC 8785 needs I-JSON input,
// which the canonicaliser itself does not fully enforce.
func checkJSON(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("is not valid JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("must be a JSON object")
	}
	type frame struct {
		object bool
		keys   map[string]struct{}
		expect bool // object: next token is a key
	}
	stack := []frame{{object: true, keys: map[string]struct{}{}, expect: true}}
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("is not valid JSON: %v", err)
		}
		top := &stack[len(stack)-1]
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].expect = true
			}
			continue
		}
		if top.object && top.expect {
			key := tok.(string)
			if _, dup := top.keys[key]; dup {
				return fmt.Errorf("has duplicate key %q", key)
			}
			top.keys[key] = struct{}{}
			top.expect = false
			continue
		}
		switch v := tok.(type) {
		case json.Delim:
			if len(stack) >= MaxJSONDepth {
				return fmt.Errorf("is nested deeper than %d levels", MaxJSONDepth)
			}
			if v == '{' {
				stack = append(stack, frame{object: true, keys: map[string]struct{}{}, expect: true})
			} else {
				stack = append(stack, frame{})
			}
			continue
		case json.Number:
			f, err := strconv.ParseFloat(v.String(), 64)
			if err != nil || math.IsInf(f, 0) {
				return fmt.Errorf("has number %s outside the IEEE double range", v)
			}
		}
		if top.object {
			top.expect = true
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("must be a single JSON object")
	}
	return nil
}

// flattenIDs renders normalised resource ids as the contract's flat form:
// key=value pairs sorted by key (byte order) joined by ';', array values
// (already de-duplicated and sorted) joined by ','; '%', ';', ',' and '='
// inside keys and values percent-encoded.
func flattenIDs(ids map[string][]string) string {
	if len(ids) == 0 {
		return ""
	}
	keys := make([]string, 0, len(ids))
	for k := range ids {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(escapeFlat(k))
		b.WriteByte('=')
		for j, v := range ids[k] {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(escapeFlat(v))
		}
	}
	return b.String()
}

func escapeFlat(s string) string {
	if !strings.ContainsAny(s, "%;,=") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', ';', ',', '=':
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FlattenResourceIDs normalises ids exactly as recording does and returns
// the flattened form; an empty or nil map flattens to "".
func FlattenResourceIDs(ids map[string]any) (string, error) {
	norm, _, err := normaliseIDs(ids)
	if err != nil {
		return "", err
	}
	return flattenIDs(norm), nil
}

// canonicalIDs is the stored JSON form of normalised ids: values that were a
// single string or number are strings, arrays are sorted de-duplicated
// string arrays.
func canonicalIDs(ids map[string][]string, single map[string]bool) ([]byte, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	m := make(map[string]any, len(ids))
	for k, vs := range ids {
		if single[k] {
			m[k] = vs[0]
		} else {
			m[k] = vs
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

// hasLoneSurrogate reports whether raw JSON escapes a UTF-16 surrogate
// (\ud800-\udfff) that is not part of a pair. encoding/json would silently
// turn one into U+FFFD; refusing it keeps stored text what was sent.
func hasLoneSurrogate(raw []byte) bool {
	hex4 := func(b []byte) (rune, bool) {
		if len(b) < 4 {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[:4]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' || i+1 >= len(raw) {
			continue
		}
		if raw[i+1] != 'u' {
			i++ // skip the escaped character, which may itself be a backslash
			continue
		}
		r, ok := hex4(raw[i+2:])
		if !ok {
			return false // not valid JSON; the parser reports it
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		case r >= 0xD800 && r <= 0xDBFF:
			j := i + 6
			if j+1 < len(raw) && raw[j] == '\\' && raw[j+1] == 'u' {
				if lo, ok := hex4(raw[j+2:]); ok && lo >= 0xDC00 && lo <= 0xDFFF {
					i = j + 5
					continue
				}
			}
			return true
		default:
			i += 5
		}
	}
	return false
}
