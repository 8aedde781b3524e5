package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"
)

// A cursor is base64url (no padding) of
//
//	version (1 byte) | occurred_at as Unix microseconds (8) | id (16) | MAC (32)
//
// where MAC = HMAC-SHA256(key, version | occurred_at | id | workspace | filters).
// The workspace and the normalised filter set are bound by the MAC but not
// carried: a cursor replayed with other filters or under another workspace
// fails verification exactly like a tampered one.
const (
	cursorVersion = 1
	cursorBodyLen = 1 + 8 + 16
	cursorLen     = cursorBodyLen + sha256.Size
)

var errBadCursor = errors.New("invalid cursor")

// cursorMAC computes the MAC of body for workspace and f.
func cursorMAC(key []byte, body []byte, workspace string, f Filters) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	// Length-prefix the workspace so it cannot run into the filters.
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(workspace)))
	m.Write(n[:])
	m.Write([]byte(workspace))
	m.Write(f.canonical())
	return m.Sum(nil)
}

// encodeCursor returns the opaque cursor for the page after p.
func encodeCursor(key []byte, p position, workspace string, f Filters) string {
	buf := make([]byte, cursorBodyLen, cursorLen)
	buf[0] = cursorVersion
	binary.BigEndian.PutUint64(buf[1:9], uint64(p.OccurredAt.UnixMicro()))
	copy(buf[9:25], p.ID[:])
	buf = append(buf, cursorMAC(key, buf, workspace, f)...)
	return base64.RawURLEncoding.EncodeToString(buf)
}

// decodeCursor verifies s against workspace and f and returns its position.
func decodeCursor(key []byte, s, workspace string, f Filters) (position, error) {
	if len(s) != base64.RawURLEncoding.EncodedLen(cursorLen) {
		return position{}, errBadCursor
	}
	buf, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(buf) != cursorLen || buf[0] != cursorVersion {
		return position{}, errBadCursor
	}
	if !hmac.Equal(buf[cursorBodyLen:], cursorMAC(key, buf[:cursorBodyLen], workspace, f)) {
		return position{}, errBadCursor
	}
	var p position
	p.OccurredAt = time.UnixMicro(int64(binary.BigEndian.Uint64(buf[1:9]))).UTC()
	copy(p.ID[:], buf[9:25])
	return p, nil
}
