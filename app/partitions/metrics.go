package partitions

import (
	"errors"
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the maintainer's Prometheus metrics. They always exist, so
// the code updates them unconditionally; they are exported only when
// Config.Registerer is set.
type metrics struct {
	partitions prometheus.Gauge
	newestTo   prometheus.Gauge
	created    prometheus.Counter
	dropped    prometheus.Counter
	errors     prometheus.Counter
	skipped    prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "auditlog_partitions",
			Help: "Partitions of audit_events, as of the last maintenance run or listing.",
		}),
		newestTo: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "auditlog_partitions_newest_upper_bound_seconds",
			Help: "Exclusive upper bound of the newest partition of audit_events, as Unix time " +
				"(+Inf for a MAXVALUE bound, 0 when there is none); alert when it comes near time().",
		}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auditlog_partitions_created_total",
			Help: "Partitions of audit_events created by this instance.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auditlog_partitions_dropped_total",
			Help: "Expired partitions of audit_events dropped by this instance.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auditlog_partitions_errors_total",
			Help: "Partition maintenance operations that ended with an error.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "auditlog_partitions_skipped_total",
			Help: "Scheduled maintenance runs left to another instance that ran this period's.",
		}),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.partitions, m.newestTo, m.created, m.dropped, m.errors, m.skipped} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// observe sets the gauges that describe the partitions: their number and
// the newest upper bound, so an alert fires before premade partitions run
// out (events beyond the bound make the relay create partitions itself).
func (m metrics) observe(parts []Partition) {
	m.partitions.Set(float64(len(parts)))
	var newest float64
	for _, p := range parts {
		switch {
		case p.isDefault():
		case p.To.IsZero(): // TO (MAXVALUE)
			newest = math.Inf(1)
		default:
			newest = math.Max(newest, float64(p.To.Unix()))
		}
	}
	m.newestTo.Set(newest)
}
