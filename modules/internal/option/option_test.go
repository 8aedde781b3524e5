package option

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBounded(t *testing.T) {
	t.Parallel()
	n := 0
	require.NoError(t, Bounded(&n, 5, 1, 100, "m: N", "1-100"))
	require.Equal(t, 5, n, "zero takes the default")
	n = 100
	require.NoError(t, Bounded(&n, 5, 1, 100, "m: N", "1-100"))
	require.Equal(t, 100, n, "a set value is kept")
	n = 101
	require.EqualError(t, Bounded(&n, 5, 1, 100, "m: N", "1-100"), "m: N must be 1-100, got 101")
	n = -1
	require.EqualError(t, Bounded(&n, 5, 1, 100, "m: N", "1-100"), "m: N must be 1-100, got -1")

	var size int64 = 10
	require.EqualError(t, Bounded(&size, 1<<20, 1024, 1<<30, "m: Bytes", "1 KiB-1 GiB"), "m: Bytes must be 1 KiB-1 GiB, got 10")

	d := 2 * time.Hour
	require.EqualError(t, Bounded(&d, time.Second, time.Millisecond, time.Hour, "m: D", "1ms-1h"), "m: D must be 1ms-1h, got 2h0m0s")
}
