// Package auth authenticates API keys and scopes every /v1 request to the
// key's workspace.
package auth

import (
	"slices"

	"github.com/gin-gonic/gin"
)

// Scopes a key may hold.
const (
	ScopeWrite = "events:write"
	ScopeRead  = "events:read"
)

// Key is an authenticated API key. It never carries the secret.
type Key struct {
	ID          string
	WorkspaceID string
	Name        string
	Scopes      []string
}

// Has reports whether the key holds scope.
func (k Key) Has(scope string) bool { return slices.Contains(k.Scopes, scope) }

const ginKey = "auditlog.auth.key"

// SetKey stores the authenticated key on the request context.
func SetKey(c *gin.Context, k Key) { c.Set(ginKey, k) }

// KeyFrom returns the key the auth middleware authenticated.
func KeyFrom(c *gin.Context) (Key, bool) {
	v, ok := c.Get(ginKey)
	if !ok {
		return Key{}, false
	}
	k, ok := v.(Key)
	return k, ok
}
