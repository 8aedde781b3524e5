package outbox

import (
	"strconv"
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

// appendFlatIDs appends normalised resource ids (sorted by key) in the
// contract's flat form: key=value pairs joined by ';', array values
// (already de-duplicated and sorted) joined by ','; '%', ';', ',' and '='
// inside keys and values percent-encoded.
func appendFlatIDs(dst []byte, ids []idEntry) []byte {
	for i := range ids {
		if i > 0 {
			dst = append(dst, ';')
		}
		dst = appendFlat(dst, ids[i].key)
		dst = append(dst, '=')
		if ids[i].single {
			dst = appendFlat(dst, ids[i].one)
			continue
		}
		for j, v := range ids[i].vals {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendFlat(dst, v)
		}
	}
	return dst
}

func appendFlat(dst []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	// Runs of bytes that need no escape are appended whole.
	start := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', ';', ',', '=':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '%', hex[c>>4], hex[c&0xF])
			start = i + 1
		}
	}
	return append(dst, s[start:]...)
}

// FlattenResourceIDs normalises ids exactly as recording does and returns
// the flattened form; an empty or nil map flattens to "".
func FlattenResourceIDs(ids map[string]any) (string, error) {
	norm, err := normaliseIDs(nil, ids)
	if err != nil {
		return "", err
	}
	return string(appendFlatIDs(nil, norm)), nil
}

// appendCanonicalIDs appends the stored JSON form of normalised ids: values
// that were a single string or number are strings, arrays are sorted
// de-duplicated string arrays. Keys are [a-z0-9_], so their byte order
// (normaliseIDs sorts by it) is RFC 8785 order.
func appendCanonicalIDs(dst []byte, ids []idEntry) []byte {
	dst = append(dst, '{')
	for i := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendJCSString(dst, ids[i].key)
		dst = append(dst, ':')
		if ids[i].single {
			dst = AppendJCSString(dst, ids[i].one)
			continue
		}
		dst = append(dst, '[')
		for j, v := range ids[i].vals {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = AppendJCSString(dst, v)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
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
