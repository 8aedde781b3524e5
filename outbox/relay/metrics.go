package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// outboxDepthSQL measures the backlog for the outbox collector: one scan of
// audit_outbox per scrape (see the package doc), and the rows set aside in
// audit_dead_letters (normally none).
const outboxDepthSQL = `
SELECT count(*),
       coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8,
       (SELECT count(*) FROM audit_dead_letters)
FROM audit_outbox`

// scrapeTimeout bounds the outbox collector's query.
const scrapeTimeout = 5 * time.Second

// metrics are the relay's Prometheus metrics.
type metrics struct {
	moved        prometheus.Counter
	errors       prometheus.Counter
	deadLetters  prometheus.Counter
	conflicts    prometheus.Counter
	gaveWay      prometheus.Counter
	batchSeconds prometheus.Histogram
}

// newMetrics registers the relay's metrics with reg. Counters already
// registered by an earlier Relay in the process are reused, so totals carry
// on across a restart; the outbox collector replaces the earlier one, which
// may hold a closed pool.
func newMetrics(reg prometheus.Registerer, pool *pgxpool.Pool, log *slog.Logger) (*metrics, error) {
	var err error
	m := &metrics{}
	if m.moved, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_relay_moved_total",
		Help: "Outbox rows moved into audit_events (events already stored included).",
	})); err != nil {
		return nil, err
	}
	if m.errors, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_relay_errors_total",
		Help: "Relay batch moves that failed and were retried later.",
	})); err != nil {
		return nil, err
	}
	if m.deadLetters, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_relay_dead_letters_total",
		Help: "Outbox rows set aside in audit_dead_letters because they could not be stored.",
	})); err != nil {
		return nil, err
	}
	if m.conflicts, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_relay_conflicts_total",
		Help: "Relay moves rolled back because another relay's move committed while they were in flight; their rows moved again.",
	})); err != nil {
		return nil, err
	}
	if m.gaveWay, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "auditlog_relay_gave_way_total",
		Help: "Relay moves launched ahead rolled back because a lock got in their way (DDL on the relay's tables, or the move before them waiting for a lock); their rows moved again.",
	})); err != nil {
		return nil, err
	}
	if m.batchSeconds, err = register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "auditlog_relay_batch_seconds",
		Help:    "Duration of relay batch moves that found rows or failed.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1ms .. ~8s
	})); err != nil {
		return nil, err
	}
	c := newOutboxCollector(pool, log)
	reg.Unregister(c) // an earlier Relay's collector has the same descriptors
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the equal collector already registered.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return c, err
}

// outboxCollector reports the outbox backlog, queried on each scrape.
type outboxCollector struct {
	pool  *pgxpool.Pool
	log   *slog.Logger
	depth *prometheus.Desc
	age   *prometheus.Desc
	dead  *prometheus.Desc
}

func newOutboxCollector(pool *pgxpool.Pool, log *slog.Logger) *outboxCollector {
	return &outboxCollector{
		pool: pool,
		log:  log,
		depth: prometheus.NewDesc("auditlog_outbox_depth",
			"Events recorded but not yet moved into audit_events.", nil, nil),
		age: prometheus.NewDesc("auditlog_outbox_oldest_age_seconds",
			"Age of the oldest event waiting in the outbox (recorded_at), 0 when empty.", nil, nil),
		dead: prometheus.NewDesc("auditlog_dead_letters",
			"Rows waiting in audit_dead_letters (all instances), until retried; alert when above 0.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.age
	ch <- c.dead
}

// Collect implements prometheus.Collector. When the database cannot be
// queried the three metrics are left out of the scrape (alert on their
// absence) rather than failing the whole scrape.
func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	var depth, dead int64
	var age float64
	if err := c.pool.QueryRow(ctx, outboxDepthSQL).Scan(&depth, &age, &dead); err != nil {
		c.log.Warn("relay: measuring outbox depth for metrics failed", "error", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(depth))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(dead))
}
