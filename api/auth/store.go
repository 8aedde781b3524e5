package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/auditlog/auditlog/outbox"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SecretPrefix starts every key secret, so a leaked key is recognisable by
// secret scanners and a malformed one is refused without a database look-up.
const SecretPrefix = "alk_"

// secretRandomBytes is the entropy of a secret: 256 bits, so a look-up by
// hash cannot be used to guess keys and the hash needs no salt or stretching.
const secretRandomBytes = 32

// secretLen is the length of a well-formed secret.
var secretLen = len(SecretPrefix) + base64.RawURLEncoding.EncodedLen(secretRandomBytes)

// MaxNameLen bounds a key's descriptive name, in characters.
const MaxNameLen = 128

// ErrNotFound is returned by Revoke for an id that names no key.
var ErrNotFound = errors.New("api key not found")

// AllScopes lists every scope a key may hold.
var AllScopes = []string{ScopeRead, ScopeWrite}

// KeyInfo describes a stored key for listing. It never carries the secret.
type KeyInfo struct {
	ID          string
	WorkspaceID string
	Name        string
	Scopes      []string
	CreatedAt   time.Time
	// LastUsedAt is when the key last authenticated a request, to within
	// about a minute; nil if never.
	LastUsedAt *time.Time
	// RevokedAt is when the key was revoked; nil while it is active.
	RevokedAt *time.Time
}

const insertKeySQL = `
INSERT INTO api_keys (id, workspace_id, name, scopes, secret_hash)
VALUES ($1, $2, $3, $4, $5)
RETURNING created_at`

const listKeysSQL = `
SELECT id, workspace_id, name, scopes, created_at, last_used_at, revoked_at
FROM api_keys
WHERE workspace_id = $1
ORDER BY created_at, id`

// It also tells every server, at commit, to forget the key from its cache
// (Authenticator.Listen). A NOTIFY serialises committing transactions for a
// moment, which is fine for something as rare as a revocation.
const revokeKeySQL = `
WITH revoked AS (
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
    WHERE id = $1
    RETURNING id
)
SELECT pg_notify('` + RevocationChannel + `', id::text) FROM revoked`

// RevocationChannel is the PostgreSQL notification channel on which Revoke
// announces a revoked key's id.
const RevocationChannel = "auditlog_api_key_revoked"

// Create stores a new key for workspaceID with scopes and returns it with
// its secret. The secret is shown only here: only its SHA-256 is stored.
func Create(ctx context.Context, pool *pgxpool.Pool, workspaceID, name string, scopes []string) (Key, string, error) {
	if !outbox.ValidWorkspaceID(workspaceID) {
		return Key{}, "", fmt.Errorf("creating api key: workspace %q must be 1-64 characters of A-Z a-z 0-9 . _ : -", workspaceID)
	}
	name = strings.TrimSpace(name)
	if err := checkName(name); err != nil {
		return Key{}, "", fmt.Errorf("creating api key: %w", err)
	}
	scopes, err := normaliseScopes(scopes)
	if err != nil {
		return Key{}, "", fmt.Errorf("creating api key: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Key{}, "", fmt.Errorf("creating api key: generating id: %w", err)
	}
	secret := newSecret()
	hash := hashSecret(secret)
	var createdAt time.Time
	if err := pool.QueryRow(ctx, insertKeySQL, id, workspaceID, name, scopes, hash[:]).Scan(&createdAt); err != nil {
		return Key{}, "", fmt.Errorf("creating api key: storing it: %w", err)
	}
	return Key{ID: id.String(), WorkspaceID: workspaceID, Name: name, Scopes: scopes}, secret, nil
}

// List returns the keys of workspaceID, oldest first, revoked ones included.
func List(ctx context.Context, pool *pgxpool.Pool, workspaceID string) ([]KeyInfo, error) {
	rows, err := pool.Query(ctx, listKeysSQL, workspaceID)
	if err != nil {
		return nil, fmt.Errorf("listing api keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyInfo, error) {
		var k KeyInfo
		var id uuid.UUID
		err := row.Scan(&id, &k.WorkspaceID, &k.Name, &k.Scopes, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt)
		k.ID = id.String()
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing api keys: %w", err)
	}
	return keys, nil
}

// Revoke revokes the key id. Revoking a revoked key is a no-op; an id that
// names no key (or is not a UUID) is ErrNotFound. Servers running
// Authenticator.Listen stop accepting the key as soon as they receive the
// notification, normally within milliseconds; others within their cache TTL
// (Options.CacheTTL, default 30s).
func Revoke(ctx context.Context, pool *pgxpool.Pool, id string) error {
	u, err := uuid.Parse(id)
	if err != nil {
		return fmt.Errorf("revoking api key %q: %w", id, ErrNotFound)
	}
	tag, err := pool.Exec(ctx, revokeKeySQL, u)
	if err != nil {
		return fmt.Errorf("revoking api key %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("revoking api key %s: %w", id, ErrNotFound)
	}
	return nil
}

// newSecret returns "alk_" and 32 random bytes in unpadded base64url.
func newSecret() string {
	b := make([]byte, secretRandomBytes)
	// crypto/rand.Read never returns an error (Go 1.24+): it crashes the
	// program rather than hand out predictable bytes.
	_, _ = rand.Read(b)
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// wellFormed reports whether s looks like a secret Create made, so garbage is
// refused without touching the database.
func wellFormed(s string) bool {
	if len(s) != secretLen || !strings.HasPrefix(s, SecretPrefix) {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(s[len(SecretPrefix):])
	return err == nil
}

func checkName(name string) error {
	if !utf8.ValidString(name) {
		return errors.New("name is not valid UTF-8")
	}
	if utf8.RuneCountInString(name) > MaxNameLen {
		return fmt.Errorf("name must be at most %d characters", MaxNameLen)
	}
	if strings.ContainsFunc(name, unicode.IsControl) {
		return errors.New("name must not contain control characters")
	}
	return nil
}

// normaliseScopes checks scopes against AllScopes and returns them sorted
// and de-duplicated.
func normaliseScopes(scopes []string) ([]string, error) {
	var out []string
	for _, s := range scopes {
		s = strings.TrimSpace(s)
		if !slices.Contains(AllScopes, s) {
			return nil, fmt.Errorf("scope %q is not one of %s", s, strings.Join(AllScopes, ", "))
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("at least one scope is required (%s)", strings.Join(AllScopes, ", "))
	}
	slices.Sort(out)
	return out, nil
}
