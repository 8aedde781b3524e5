// Package cursorkey keeps the secret keys that sign the API's pagination
// cursors, and seals and opens cursors with them. A key lives in
// auditlog_settings so every instance signs and verifies with the same one;
// the first instance to need it creates it, and a race between two first
// instances is settled by the primary key. Each route has a key of its own,
// so no route can mint another's cursors.
//
// A cursor is base64url (no padding) of body | HMAC-SHA256(key, body |
// bound): the route encodes its position in body (starting with a version
// byte of its own) and binds, without carrying them, what the cursor is
// only valid for (the workspace, the filters), so a cursor replayed under
// another workspace or filters fails exactly like a tampered one.
package cursorkey

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

	"github.com/jackc/pgx/v5/pgxpool"
)

// Len is the size of a key in bytes.
const Len = 32

const (
	insertKeySQL = `INSERT INTO auditlog_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`
	selectKeySQL = `SELECT value FROM auditlog_settings WHERE name = $1`
)

// Store loads one named key once and caches it; a failed load is retried
// by the next call.
type Store struct {
	pool *pgxpool.Pool
	name string
	mu   sync.Mutex
	key  []byte
}

// New returns the store of the key called name (its auditlog_settings row).
func New(pool *pgxpool.Pool, name string) (*Store, error) {
	if pool == nil {
		return nil, errors.New("cursorkey: pool is nil")
	}
	if name == "" {
		return nil, errors.New("cursorkey: name is empty")
	}
	return &Store{pool: pool, name: name}, nil
}

// Get returns the key, creating it on first use.
func (s *Store) Get(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != nil {
		return s.key, nil
	}
	fresh := make([]byte, Len)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("generating cursor key %q: %w", s.name, err)
	}
	if _, err := s.pool.Exec(ctx, insertKeySQL, s.name, fresh); err != nil {
		return nil, fmt.Errorf("storing cursor key %q: %w", s.name, err)
	}
	var key []byte
	if err := s.pool.QueryRow(ctx, selectKeySQL, s.name).Scan(&key); err != nil {
		return nil, fmt.Errorf("loading cursor key %q: %w", s.name, err)
	}
	if len(key) < Len {
		return nil, fmt.Errorf("loading cursor key %q: stored key is %d bytes, want %d", s.name, len(key), Len)
	}
	s.key = key
	return key, nil
}

// Seal returns the cursor carrying body, bound to bound.
func Seal(key, body, bound []byte) string {
	buf := make([]byte, 0, len(body)+sha256.Size)
	buf = append(buf, body...)
	buf = append(buf, mac(key, body, bound)...)
	return base64.RawURLEncoding.EncodeToString(buf)
}

// Open returns the body of the cursor s if Seal made it with key and bound
// and its body is bodyLen bytes; ok is false for anything else.
func Open(key []byte, s string, bodyLen int, bound []byte) (body []byte, ok bool) {
	n := bodyLen + sha256.Size
	if len(s) != base64.RawURLEncoding.EncodedLen(n) {
		return nil, false
	}
	buf, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(buf) != n || !hmac.Equal(buf[bodyLen:], mac(key, buf[:bodyLen], bound)) {
		return nil, false
	}
	return buf[:bodyLen], true
}

// Bound returns what a cursor of workspace binds: the workspace,
// length-prefixed so it cannot run into rest, then rest.
func Bound(workspace string, rest []byte) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(workspace)+len(rest)), uint32(len(workspace)))
	b = append(b, workspace...)
	return append(b, rest...)
}

func mac(key, body, bound []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	m.Write(bound)
	return m.Sum(nil)
}
