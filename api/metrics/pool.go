package metrics

import (
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolStater is what the pool collector reads: *pgxpool.Pool.
type PoolStater interface {
	Stat() *pgxpool.Stat
}

// poolMetric is one metric of the pool collector: its descriptor, its type
// and how to read it from a snapshot.
type poolMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(s *pgxpool.Stat) float64
}

// PoolCollector reports a pgx connection pool's statistics
// (pgxpool.Stat) on every scrape. It asks the pool, never the database, so
// a scrape costs nothing and works during a database outage.
type PoolCollector struct {
	pool    PoolStater
	metrics []poolMetric
}

// NewPoolCollector returns a collector of pool's statistics:
//
//   - auditlog_db_pool_max_conns, _total_conns, _acquired_conns,
//     _idle_conns, _constructing_conns (gauges)
//   - auditlog_db_pool_acquires_total, _empty_acquires_total (an acquire
//     that had to wait for a connection), _canceled_acquires_total,
//     _new_conns_total, _max_lifetime_destroys_total,
//     _max_idle_destroys_total (counters)
//   - auditlog_db_pool_acquire_seconds_total,
//     _empty_acquire_wait_seconds_total (counters of time spent acquiring,
//     and waiting for a free connection)
func NewPoolCollector(pool PoolStater) *PoolCollector {
	gauge := func(name, help string, f func(*pgxpool.Stat) int32) poolMetric {
		return poolMetric{
			desc:  prometheus.NewDesc("auditlog_db_pool_"+name, help, nil, nil),
			kind:  prometheus.GaugeValue,
			value: func(s *pgxpool.Stat) float64 { return float64(f(s)) },
		}
	}
	counter := func(name, help string, f func(*pgxpool.Stat) float64) poolMetric {
		return poolMetric{
			desc:  prometheus.NewDesc("auditlog_db_pool_"+name, help, nil, nil),
			kind:  prometheus.CounterValue,
			value: f,
		}
	}
	return &PoolCollector{pool: pool, metrics: []poolMetric{
		gauge("max_conns", "Largest size of the database connection pool (database.max_conns).",
			(*pgxpool.Stat).MaxConns),
		gauge("total_conns", "Connections in the pool: acquired, idle and being opened.",
			(*pgxpool.Stat).TotalConns),
		gauge("acquired_conns", "Connections currently in use.",
			(*pgxpool.Stat).AcquiredConns),
		gauge("idle_conns", "Connections open and idle in the pool.",
			(*pgxpool.Stat).IdleConns),
		gauge("constructing_conns", "Connections being opened.",
			(*pgxpool.Stat).ConstructingConns),
		counter("acquires_total", "Successful connection acquires from the pool.",
			func(s *pgxpool.Stat) float64 { return float64(s.AcquireCount()) }),
		counter("empty_acquires_total", "Acquires that had to wait because no idle connection was ready.",
			func(s *pgxpool.Stat) float64 { return float64(s.EmptyAcquireCount()) }),
		counter("canceled_acquires_total", "Acquires given up because their context ended.",
			func(s *pgxpool.Stat) float64 { return float64(s.CanceledAcquireCount()) }),
		counter("new_conns_total", "Connections opened by the pool.",
			func(s *pgxpool.Stat) float64 { return float64(s.NewConnsCount()) }),
		counter("max_lifetime_destroys_total", "Connections closed for reaching their maximum lifetime.",
			func(s *pgxpool.Stat) float64 { return float64(s.MaxLifetimeDestroyCount()) }),
		counter("max_idle_destroys_total", "Connections closed for idling too long.",
			func(s *pgxpool.Stat) float64 { return float64(s.MaxIdleDestroyCount()) }),
		counter("acquire_seconds_total", "Time spent acquiring connections, successful acquires only.",
			func(s *pgxpool.Stat) float64 { return s.AcquireDuration().Seconds() }),
		counter("empty_acquire_wait_seconds_total", "Time spent waiting for a free connection.",
			func(s *pgxpool.Stat) float64 { return s.EmptyAcquireWaitTime().Seconds() }),
	}}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector: one pgxpool.Stat snapshot per
// scrape.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(s))
	}
}

// RegisterPool registers a PoolCollector of pool on reg, replacing one
// registered earlier (by a server built before on the same registry, whose
// pool may be closed).
func RegisterPool(reg *prometheus.Registry, pool PoolStater) error {
	if reg == nil {
		return errors.New("metrics: registry is required")
	}
	if pool == nil {
		return errors.New("metrics: pool is required")
	}
	c := NewPoolCollector(pool)
	reg.Unregister(c) // same descriptors as an earlier one: it goes
	return reg.Register(c)
}
