package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

func TestPoolCollector(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t)
	reg := prometheus.NewRegistry()
	require.NoError(t, RegisterPool(reg, pool))

	before, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Equal(t, 13, before, "every pool metric is reported")

	acquires := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "auditlog_db_pool_acquires_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatal("auditlog_db_pool_acquires_total missing")
		return 0
	}
	n := acquires()
	conn, err := pool.Acquire(t.Context())
	require.NoError(t, err)
	conn.Release()
	require.Equal(t, n+1, acquires())

	// A second registration (a server built again on the same registry)
	// replaces the first instead of failing.
	require.NoError(t, RegisterPool(reg, pool))
	require.Error(t, RegisterPool(nil, pool))
	require.Error(t, RegisterPool(reg, nil))
}
