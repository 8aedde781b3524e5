package checkpoints

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
)

// A cursor is base64url (no padding) of
//
//	version (1 byte) | id of the page's last checkpoint (8) | MAC (32)
//
// where MAC = HMAC-SHA256(key, cursorDomain | version | id | len(workspace)
// (4, big endian) | workspace). The workspace is bound by the MAC but not
// carried: a cursor replayed under another workspace fails verification
// exactly like a tampered one. The query is scoped to the key's workspace
// in any case (pageSQL), so even a forged cursor could only skip rows of
// the caller's own workspace.
const (
	cursorVersion = 1
	cursorBodyLen = 1 + 8
	cursorLen     = cursorBodyLen + sha256.Size
)

// cursorDomain separates these MACs from any other use of HMAC-SHA256 in
// the service.
const cursorDomain = "auditlog checkpoints cursor\x00"

var errBadCursor = errors.New("invalid cursor")

// cursorMAC computes the MAC of body for workspace.
func cursorMAC(key, body []byte, workspace string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(cursorDomain))
	m.Write(body)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(workspace)))
	m.Write(n[:])
	m.Write([]byte(workspace))
	return m.Sum(nil)
}

// encodeCursor returns the opaque cursor for the page after the checkpoint
// lastID of workspace.
func encodeCursor(key []byte, lastID int64, workspace string) string {
	buf := make([]byte, cursorBodyLen, cursorLen)
	buf[0] = cursorVersion
	binary.BigEndian.PutUint64(buf[1:9], uint64(lastID))
	buf = append(buf, cursorMAC(key, buf, workspace)...)
	return base64.RawURLEncoding.EncodeToString(buf)
}

// decodeCursor verifies s against workspace and returns the id it
// continues after.
func decodeCursor(key []byte, s, workspace string) (int64, error) {
	if len(s) != base64.RawURLEncoding.EncodedLen(cursorLen) {
		return 0, errBadCursor
	}
	buf, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(buf) != cursorLen || buf[0] != cursorVersion {
		return 0, errBadCursor
	}
	if !hmac.Equal(buf[cursorBodyLen:], cursorMAC(key, buf[:cursorBodyLen], workspace)) {
		return 0, errBadCursor
	}
	return int64(binary.BigEndian.Uint64(buf[1:9])), nil
}
