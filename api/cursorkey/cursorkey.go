// Package cursorkey keeps the secret keys that sign the API's pagination
// cursors. A key lives in auditlog_settings so every instance signs and
// verifies with the same one; the first instance to need it creates it, and
// a race between two first instances is settled by the primary key. Each
// route has a key of its own, so no route can mint another's cursors.
package cursorkey

import (
	"context"
	"crypto/rand"
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
