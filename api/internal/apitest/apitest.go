// Package apitest holds test helpers shared by the api packages' tests.
package apitest

import (
	"context"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
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
