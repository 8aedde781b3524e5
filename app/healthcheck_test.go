package app

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoopbackAddr(t *testing.T) {
	t.Parallel()
	for listen, want := range map[string]string{
		":8080":          "127.0.0.1:8080",
		"0.0.0.0:80":     "127.0.0.1:80",
		"[::]:8080":      "[::1]:8080",
		"10.1.2.3:9000":  "10.1.2.3:9000",
		"localhost:8080": "localhost:8080",
	} {
		got, err := loopbackAddr(listen)
		require.NoError(t, err, listen)
		require.Equal(t, want, got, listen)
	}
	_, err := loopbackAddr("8080")
	require.Error(t, err)
}
