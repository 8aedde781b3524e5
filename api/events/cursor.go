package events

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"

	"github.com/auditlog/auditlog/api/cursorkey"
)

// A cursor (package cursorkey) carries
//
//	version (1 byte) | occurred_at as Unix microseconds (8) | id (16)
//
// and is bound to the workspace and the normalised filter set: a cursor
// replayed with other filters or under another workspace fails
// verification exactly like a tampered one.
const (
	cursorVersion = 1
	cursorBodyLen = 1 + 8 + 16
	cursorLen     = cursorBodyLen + sha256.Size
)

var errBadCursor = errors.New("invalid cursor")

// encodeCursor returns the opaque cursor for the page after p.
func encodeCursor(key []byte, p position, workspace string, f Filters) string {
	body := make([]byte, cursorBodyLen)
	body[0] = cursorVersion
	binary.BigEndian.PutUint64(body[1:9], uint64(p.OccurredAt.UnixMicro()))
	copy(body[9:25], p.ID[:])
	return cursorkey.Seal(key, body, cursorkey.Bound(workspace, f.canonical()))
}

// decodeCursor verifies s against workspace and f and returns its position.
func decodeCursor(key []byte, s, workspace string, f Filters) (position, error) {
	body, ok := cursorkey.Open(key, s, cursorBodyLen, cursorkey.Bound(workspace, f.canonical()))
	if !ok || body[0] != cursorVersion {
		return position{}, errBadCursor
	}
	var p position
	p.OccurredAt = time.UnixMicro(int64(binary.BigEndian.Uint64(body[1:9]))).UTC()
	copy(p.ID[:], body[9:25])
	return p, nil
}
