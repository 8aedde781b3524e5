package outbox

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

// canonicalJSON validates raw as one JSON object and renders it in RFC 8785
// form in a single pass: members sorted by the UTF-16 code units of their
// names, no insignificant whitespace, strings with the minimal escapes,
// numbers in ECMAScript form (jcs.NumberToJSON, the subtle part, comes from
// the library). It also refuses what I-JSON forbids and RFC 8785 assumes
// absent: duplicate names, unpaired surrogates, numbers beyond IEEE double
// range; and nesting deeper than MaxJSONDepth.
//
// It replaces a json.Decoder token walk followed by jcs.Transform, which
// together cost ~5x more per event; FuzzCanonicalObject checks the two agree.
func canonicalJSON(raw []byte) ([]byte, error) {
	return appendCanonicalJSON(make([]byte, 0, len(raw)), raw)
}

// appendCanonicalJSON is canonicalJSON appending to dst.
func appendCanonicalJSON(dst, raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("is not valid UTF-8")
	}
	p := jcsParser{s: raw}
	p.skipSpace()
	if p.i >= len(raw) || raw[p.i] != '{' {
		return nil, errors.New("must be a JSON object")
	}
	out, err := p.value(dst)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.i != len(raw) {
		return nil, errors.New("must be a single JSON object")
	}
	return out, nil
}

// errLoneSurrogate is a \u escape of half a UTF-16 surrogate pair:
// encoding/json would silently turn it into U+FFFD; refusing it keeps
// stored text what was sent.
var errLoneSurrogate = errors.New("has an unpaired UTF-16 surrogate escape")

type jcsParser struct {
	s     []byte
	i     int
	depth int
}

type jcsMember struct {
	key        string
	start, end int // the value's canonical bytes in the object's arena
}

func (p *jcsParser) errorf(format string, args ...any) error {
	return fmt.Errorf("is not valid JSON at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *jcsParser) skipSpace() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jcsParser) value(dst []byte) ([]byte, error) {
	p.skipSpace()
	if p.i >= len(p.s) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(dst)
	case c == '[':
		return p.array(dst)
	case c == '"':
		str, err := p.str()
		if err != nil {
			return nil, err
		}
		return AppendJCSString(dst, str), nil
	case c == 't':
		return p.literal(dst, "true")
	case c == 'f':
		return p.literal(dst, "false")
	case c == 'n':
		return p.literal(dst, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(dst)
	default:
		return nil, p.errorf("unexpected character %q", c)
	}
}

func (p *jcsParser) literal(dst []byte, lit string) ([]byte, error) {
	if len(p.s)-p.i < len(lit) || string(p.s[p.i:p.i+len(lit)]) != lit {
		return nil, p.errorf("invalid literal")
	}
	p.i += len(lit)
	return append(dst, lit...), nil
}

func (p *jcsParser) enter() error {
	p.depth++
	if p.depth > MaxJSONDepth {
		return fmt.Errorf("is nested deeper than %d levels", MaxJSONDepth)
	}
	return nil
}

func (p *jcsParser) object(dst []byte) ([]byte, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.i++ // '{'
	var (
		members []jcsMember
		arena   []byte
	)
	p.skipSpace()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.depth--
		return append(dst, '{', '}'), nil
	}
	for {
		p.skipSpace()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return nil, p.errorf("expected a member name")
		}
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return nil, p.errorf("expected ':'")
		}
		p.i++
		start := len(arena)
		if arena, err = p.value(arena); err != nil {
			return nil, err
		}
		members = append(members, jcsMember{key: key, start: start, end: len(arena)})
		p.skipSpace()
		if p.i >= len(p.s) {
			return nil, p.errorf("unexpected end in object")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] != '}' {
			return nil, p.errorf("expected ',' or '}'")
		}
		p.i++
		break
	}
	slices.SortFunc(members, func(a, b jcsMember) int { return compareUTF16(a.key, b.key) })
	dst = append(dst, '{')
	for i, m := range members {
		if i > 0 {
			if members[i-1].key == m.key {
				return nil, fmt.Errorf("has duplicate key %q", m.key)
			}
			dst = append(dst, ',')
		}
		dst = AppendJCSString(dst, m.key)
		dst = append(dst, ':')
		dst = append(dst, arena[m.start:m.end]...)
	}
	p.depth--
	return append(dst, '}'), nil
}

func (p *jcsParser) array(dst []byte) ([]byte, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.i++ // '['
	dst = append(dst, '[')
	p.skipSpace()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.depth--
		return append(dst, ']'), nil
	}
	for n := 0; ; n++ {
		if n > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = p.value(dst); err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.i >= len(p.s) {
			return nil, p.errorf("unexpected end in array")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] != ']' {
			return nil, p.errorf("expected ',' or ']'")
		}
		p.i++
		p.depth--
		return append(dst, ']'), nil
	}
}

// str parses a JSON string at p.i (on its opening quote) and returns its
// decoded value.
func (p *jcsParser) str() (string, error) {
	p.i++ // opening quote
	start := p.i
	// Fast path: no escapes.
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '"' {
			s := string(p.s[start:p.i])
			p.i++
			return s, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", p.errorf("control character in string")
		}
		p.i++
	}
	buf := append([]byte(nil), p.s[start:p.i]...)
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(buf), nil
		case c < 0x20:
			return "", p.errorf("control character in string")
		case c != '\\':
			buf = append(buf, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.s) {
			return "", p.errorf("unexpected end in string")
		}
		esc := p.s[p.i+1]
		p.i += 2
		switch esc {
		case '"', '\\', '/':
			buf = append(buf, esc)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", p.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				lo := rune(-1)
				if r < 0xDC00 && p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
					p.i += 2
					lo, ok = p.hex4()
					if !ok {
						return "", p.errorf("bad \\u escape")
					}
				}
				r = utf16.DecodeRune(r, lo)
				if r == utf8.RuneError {
					return "", errLoneSurrogate
				}
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return "", p.errorf("bad escape \\%c", esc)
		}
	}
	return "", p.errorf("unterminated string")
}

func (p *jcsParser) hex4() (rune, bool) {
	if len(p.s)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range p.s[p.i : p.i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	p.i += 4
	return r, true
}

func (p *jcsParser) number(dst []byte) ([]byte, error) {
	start := p.i
	digits := func() int {
		n := 0
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.s[p.i] == '-' {
		p.i++
	}
	if p.i < len(p.s) && p.s[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return nil, p.errorf("bad number")
	}
	if p.i < len(p.s) && p.s[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return nil, p.errorf("bad number")
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return nil, p.errorf("bad number")
		}
	}
	lit := string(p.s[start:p.i])
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return nil, fmt.Errorf("has number %s outside the IEEE double range", lit)
	}
	s, err := jcs.NumberToJSON(f)
	if err != nil {
		return nil, fmt.Errorf("has number %s that cannot be represented", lit)
	}
	return append(dst, s...), nil
}

// AppendJCSString appends s as an RFC 8785 string: only '"', '\\' and
// control characters are escaped, with the short forms where JSON has them.
// s must be valid UTF-8 (stored text always is).
func AppendJCSString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	// Runs of bytes that need no escape are appended whole.
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !strStop[c] {
			continue
		}
		dst = append(dst, s[start:i]...)
		start = i + 1
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// compareUTF16 orders member names by their UTF-16 code units, as RFC 8785
// requires. UTF-8 byte order agrees except where a supplementary character
// (a surrogate pair in UTF-16) meets one in U+E000-U+FFFF.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			ua, ub := utf16Units(ra), utf16Units(rb)
			if ua[0] != ub[0] {
				return int(ua[0]) - int(ub[0])
			}
			return int(ua[1]) - int(ub[1])
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

func utf16Units(r rune) [2]uint16 {
	if r >= 0x10000 {
		hi, lo := utf16.EncodeRune(r)
		return [2]uint16{uint16(hi), uint16(lo)}
	}
	return [2]uint16{uint16(r), 0}
}

// isCanonicalObject reports whether raw is a JSON object already in the
// form canonicalJSON would give it, without allocating (in the common case):
// details written by machines usually are, and re-encoding them was most of
// the cost of recording (PERFORMANCE.md). false means "take the full path",
// which also validates: anything unusual (an escape other than the minimal
// ones, a key needing UTF-16 ordering, a number outside the plain integer
// form that does not survive a round trip) answers false rather than being
// decided here. FuzzCanonicalObject checks that true implies
// canonicalJSON(raw) == raw.
func isCanonicalObject(raw []byte) bool {
	if len(raw) < 2 || raw[0] != '{' || !utf8.Valid(raw) {
		return false
	}
	c := canonChecker{s: raw}
	return c.value() && c.i == len(raw)
}

// canonChecker walks JSON that must already be canonical.
type canonChecker struct {
	s     []byte
	i     int
	depth int
}

func (c *canonChecker) value() bool {
	if c.i >= len(c.s) {
		return false
	}
	switch ch := c.s[c.i]; {
	case ch == '{':
		return c.object()
	case ch == '[':
		return c.array()
	case ch == '"':
		_, _, ok := c.str()
		return ok
	case ch == 't':
		return c.literal("true")
	case ch == 'f':
		return c.literal("false")
	case ch == 'n':
		return c.literal("null")
	case ch == '-' || (ch >= '0' && ch <= '9'):
		return c.number()
	}
	return false
}

func (c *canonChecker) literal(lit string) bool {
	if len(c.s)-c.i < len(lit) || string(c.s[c.i:c.i+len(lit)]) != lit {
		return false
	}
	c.i += len(lit)
	return true
}

func (c *canonChecker) object() bool {
	if c.depth++; c.depth > MaxJSONDepth {
		return false
	}
	c.i++ // '{'
	if c.i < len(c.s) && c.s[c.i] == '}' {
		c.i++
		c.depth--
		return true
	}
	var prev []byte
	for n := 0; ; n++ {
		if c.i >= len(c.s) || c.s[c.i] != '"' {
			return false
		}
		key, escaped, ok := c.str()
		// An escaped key's bytes are not its value; let the full path
		// order it.
		if !ok || escaped {
			return false
		}
		if n > 0 && !keyLess(prev, key) {
			return false // out of order or a duplicate
		}
		prev = key
		if c.i >= len(c.s) || c.s[c.i] != ':' {
			return false
		}
		c.i++
		if !c.value() {
			return false
		}
		if c.i >= len(c.s) {
			return false
		}
		switch c.s[c.i] {
		case ',':
			c.i++
		case '}':
			c.i++
			c.depth--
			return true
		default:
			return false
		}
	}
}

// keyLess reports a < b in RFC 8785 order (UTF-16 code units). Byte order
// agrees up to the first difference unless that difference is inside a
// multi-byte character, which compareUTF16 then decides.
func keyLess(a, b []byte) bool {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			if a[i] < utf8.RuneSelf && b[i] < utf8.RuneSelf {
				return a[i] < b[i]
			}
			return compareUTF16(string(a), string(b)) < 0
		}
	}
	return len(a) < len(b)
}

func (c *canonChecker) array() bool {
	if c.depth++; c.depth > MaxJSONDepth {
		return false
	}
	c.i++ // '['
	if c.i < len(c.s) && c.s[c.i] == ']' {
		c.i++
		c.depth--
		return true
	}
	for {
		if !c.value() || c.i >= len(c.s) {
			return false
		}
		switch c.s[c.i] {
		case ',':
			c.i++
		case ']':
			c.i++
			c.depth--
			return true
		default:
			return false
		}
	}
}

// strStop marks the bytes that end a run of plain string content: the
// quote, the backslash and the control characters.
var strStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// str checks a string at c.i (its opening quote) is in canonical form and
// returns its raw contents and whether they hold an escape.
func (c *canonChecker) str() (raw []byte, escaped, ok bool) {
	// The slice and index in locals: stored back through c on every byte,
	// this loop was the most expensive part of recording an event.
	s, i := c.s, c.i+1
	start := i
	for {
		// Plain content, the bulk of a string: one table look-up a byte.
		for i < len(s) && !strStop[s[i]] {
			i++
		}
		if i >= len(s) {
			return nil, false, false
		}
		switch ch := s[i]; {
		case ch == '"':
			c.i = i + 1
			return s[start:i], escaped, true
		case ch < 0x20:
			return nil, false, false
		}
		escaped = true // a backslash
		if i+1 >= len(s) {
			return nil, false, false
		}
		switch s[i+1] {
		case '"', '\\', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			// Canonical only for a control character without a short
			// form, in lowercase hex.
			if len(s)-i < 6 || s[i+2] != '0' || s[i+3] != '0' {
				return nil, false, false
			}
			hi, lo := s[i+4], s[i+5]
			if hi != '0' && hi != '1' {
				return nil, false, false
			}
			var v byte
			switch {
			case lo >= '0' && lo <= '9':
				v = lo - '0'
			case lo >= 'a' && lo <= 'f':
				v = lo - 'a' + 10
			default:
				return nil, false, false
			}
			v += (hi - '0') << 4
			switch v {
			case '\b', '\f', '\n', '\r', '\t':
				return nil, false, false
			}
			i += 6
		default:
			return nil, false, false
		}
	}
}

// number accepts integers of at most 15 digits without a leading zero or a
// negative zero (exact in a double, printed as themselves), and any other
// literal only if it is already what jcs.NumberToJSON prints for it.
func (c *canonChecker) number() bool {
	start := c.i
	if c.s[c.i] == '-' {
		c.i++
	}
	digits := c.i
	for c.i < len(c.s) && c.s[c.i] >= '0' && c.s[c.i] <= '9' {
		c.i++
	}
	nd := c.i - digits
	if nd == 0 {
		return false
	}
	plain := c.i >= len(c.s) || (c.s[c.i] != '.' && c.s[c.i] != 'e' && c.s[c.i] != 'E')
	if plain && nd <= 15 && (c.s[digits] != '0' || nd == 1) && string(c.s[start:c.i]) != "-0" {
		return true
	}
	for c.i < len(c.s) && isNumberByte(c.s[c.i]) {
		c.i++
	}
	lit := string(c.s[start:c.i])
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return false
	}
	s, err := jcs.NumberToJSON(f)
	return err == nil && s == lit
}

func isNumberByte(ch byte) bool {
	return ch >= '0' && ch <= '9' || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-'
}
