package checkpoints

import (
	"encoding/binary"
	"errors"

	"github.com/auditlog/auditlog/api/cursorkey"
)

// A cursor (package cursorkey) carries
//
//	version (1 byte) | id of the page's last checkpoint (8)
//
// and is bound to the workspace. The query is scoped to the key's
// workspace in any case (integrity.ListPageSQL), so even a forged cursor
// could only skip rows of the caller's own workspace.
const (
	cursorVersion = 1
	cursorBodyLen = 1 + 8
)

var errBadCursor = errors.New("invalid cursor")

// encodeCursor returns the opaque cursor for the page after the checkpoint
// lastID of workspace.
func encodeCursor(key []byte, lastID int64, workspace string) string {
	body := binary.BigEndian.AppendUint64([]byte{cursorVersion}, uint64(lastID))
	return cursorkey.Seal(key, body, cursorkey.Bound(workspace, nil))
}

// decodeCursor verifies s against workspace and returns the id it
// continues after.
func decodeCursor(key []byte, s, workspace string) (int64, error) {
	body, ok := cursorkey.Open(key, s, cursorBodyLen, cursorkey.Bound(workspace, nil))
	if !ok || body[0] != cursorVersion {
		return 0, errBadCursor
	}
	return int64(binary.BigEndian.Uint64(body[1:9])), nil
}
