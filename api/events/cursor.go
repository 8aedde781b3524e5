package events

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
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
	cursorKeyLen  = 32
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

// The signing key lives in auditlog_settings so every instance signs and
// verifies with the same one; the first instance to need it creates it, and
// a race between two first instances is settled by the primary key.
const (
	insertCursorKeySQL = `INSERT INTO auditlog_settings (name, value) VALUES ('cursor_key', $1) ON CONFLICT (name) DO NOTHING`
	selectCursorKeySQL = `SELECT value FROM auditlog_settings WHERE name = 'cursor_key'`
)

// cursorKeys loads the signing key once and caches it; a failed load is
// retried by the next request.
type cursorKeys struct {
	pool *pgxpool.Pool
	mu   sync.Mutex
	key  []byte
}

func (k *cursorKeys) get(ctx context.Context) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.key != nil {
		return k.key, nil
	}
	fresh := make([]byte, cursorKeyLen)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("generating cursor key: %w", err)
	}
	if _, err := k.pool.Exec(ctx, insertCursorKeySQL, fresh); err != nil {
		return nil, fmt.Errorf("storing cursor key: %w", err)
	}
	var key []byte
	if err := k.pool.QueryRow(ctx, selectCursorKeySQL).Scan(&key); err != nil {
		return nil, fmt.Errorf("loading cursor key: %w", err)
	}
	if len(key) < cursorKeyLen {
		return nil, fmt.Errorf("loading cursor key: stored key is %d bytes, want %d", len(key), cursorKeyLen)
	}
	k.key = key
	return key, nil
}
