// Package apitest holds test helpers shared by the api packages' tests.
package apitest

import (
	"context"
	"crypto/rand"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// DeadPool returns a pool on a local port where nothing listens, so every
// connection attempt is refused at once: the database is unavailable.
func DeadPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+addr+"/x?connect_timeout=2&sslmode=disable")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// MissingDatabaseURL returns a URL on the test server (package testdb) naming
// a database that does not exist: the server answers, and refuses every
// connection with SQLSTATE 3D000.
func MissingDatabaseURL(t testing.TB) string {
	t.Helper()
	return testdb.URLFor(t, uniqueName("auditlog_missing_"))
}

// MissingRoleURL returns a URL on the test server naming a role that does
// not exist: the server refuses the login with SQLSTATE 28000.
func MissingRoleURL(t testing.TB) string {
	t.Helper()
	u, err := url.Parse(testdb.AdminURL(t))
	require.NoError(t, err)
	u.User = url.User(uniqueName("auditlog_missing_"))
	return u.String()
}

// MissingDatabasePool returns a pool on MissingDatabaseURL: the database
// server is up, but the database is not there (dropped, or not created yet).
func MissingDatabasePool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), MissingDatabaseURL(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// uniqueName returns a fresh name with prefix, lower case so that it means
// the same quoted or not.
func uniqueName(prefix string) string {
	return prefix + strings.ToLower(rand.Text())
}
