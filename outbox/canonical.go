package outbox

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// MaxJSONDepth bounds the nesting of details objects; deeper input is refused
// rather than walked.
const MaxJSONDepth = 32

// CanonicalObject checks that raw is one JSON object (valid UTF-8, no
// duplicate keys, no unpaired surrogate escapes, nesting at most
// MaxJSONDepth, numbers representable as IEEE doubles) and returns its
// RFC 8785 canonical form. The same logical object always yields the same
// bytes.
func CanonicalObject(raw []byte) ([]byte, error) {
	return canonicalJSON(raw)
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
// string arrays. Keys are [a-z0-9_], so byte order is RFC 8785 order.
func canonicalIDs(ids map[string][]string, single map[string]bool) []byte {
	if len(ids) == 0 {
		return nil
	}
	keys := sortedKeys(ids)
	out := []byte{'{'}
	for i, k := range keys {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendJCSString(out, k)
		out = append(out, ':')
		if single[k] {
			out = appendJCSString(out, ids[k][0])
			continue
		}
		out = append(out, '[')
		for j, v := range ids[k] {
			if j > 0 {
				out = append(out, ',')
			}
			out = appendJCSString(out, v)
		}
		out = append(out, ']')
	}
	return append(out, '}')
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
