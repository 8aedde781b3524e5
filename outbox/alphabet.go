package outbox

// The contract's alphabets (§1), as byte loops: they run for every field of
// every recorded event, where regexps cost ~3 µs per event (PERFORMANCE.md),
// and every package that validates a workspace, action, source, resource
// type, actor email or actor id (filters, keys, configuration) calls these
// rather than its own copy.

func isLowerWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
}

// allBytes reports whether s is min..max bytes, each accepted by ok.
func allBytes(s string, min, max int, ok func(byte) bool) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// ValidWorkspaceID reports whether s is 1-64 of A-Z a-z 0-9 . _ : -.
func ValidWorkspaceID(s string) bool {
	return allBytes(s, 1, maxWorkspaceLen, func(c byte) bool {
		return isLowerWordByte(c) || c >= 'A' && c <= 'Z' || c == '.' || c == ':' || c == '-'
	})
}

// validActionWordByte is one byte of an action word or resource type.
func validActionWordByte(c byte) bool { return isLowerWordByte(c) || c == '-' }

// ValidResourceType reports whether s is 1-128 of a-z 0-9 _ - (one action
// word).
func ValidResourceType(s string) bool {
	return allBytes(s, 1, MaxResourceTypeLen, validActionWordByte)
}

// ValidAction reports whether s is at most 128 characters of lowercase
// dotted words of a-z 0-9 _ -, at least two (member.invite).
func ValidAction(s string) bool {
	if len(s) == 0 || len(s) > MaxActionLen {
		return false
	}
	words, wordLen := 1, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			if wordLen == 0 {
				return false
			}
			words, wordLen = words+1, 0
		case validActionWordByte(c):
			wordLen++
		default:
			return false
		}
	}
	return words >= 2 && wordLen > 0
}

// ValidSource reports whether s is 1-32 of a-z 0-9 _.
func ValidSource(s string) bool { return allBytes(s, 1, MaxSourceLen, isLowerWordByte) }

// validResourceKey reports whether s is a resource id key: 1-64 of a-z 0-9 _.
func validResourceKey(s string) bool { return allBytes(s, 1, 64, isLowerWordByte) }

// ValidEmail reports whether s, already trimmed and lower-cased, is an
// actor email: at most MaxEmailLen characters, one '@' neither first nor
// last, no space, tab, CR or LF.
func ValidEmail(s string) bool { return !tooLong(s, MaxEmailLen) && oneAt(s) }

// ValidActorID reports whether s, already trimmed, is at most MaxActorIDLen
// characters.
func ValidActorID(s string) bool { return !tooLong(s, MaxActorIDLen) }
