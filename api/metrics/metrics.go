// Package metrics exposes the server's Prometheus registry at /metrics,
// counts HTTP requests by route and status, and reports the connection
// pool's statistics. Every component registers its own
// collectors on the same *prometheus.Registry, never the global default.
package metrics

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// UnmatchedRoute labels requests that matched no route, so arbitrary paths
// cannot create label values.
const UnmatchedRoute = "unmatched"

// HTTP holds the request metrics.
type HTTP struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
}

// NewHTTP registers the HTTP request metrics on reg (reusing them if they are
// already registered there):
//
//   - auditlog_http_requests_total{route,method,status}
//   - auditlog_http_request_seconds{route,method} (histogram)
//   - auditlog_http_response_bytes_total{route,method}: response body
//     bytes written; for route "/v1/events/export" these are the bytes of
//     CSV exports sent (complete and cut)
//
// route is gin's route pattern (e.g. "/v1/events"), or "unmatched".
func NewHTTP(reg *prometheus.Registry) (*HTTP, error) {
	if reg == nil {
		return nil, errors.New("metrics: registry is required")
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "auditlog_http_requests_total",
		Help: "HTTP requests served, by route pattern, method and status code.",
	}, []string{"route", "method", "status"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "auditlog_http_request_seconds",
		Help:    "Time to serve HTTP requests, by route pattern and method.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"route", "method"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "auditlog_http_response_bytes_total",
		Help: "Response body bytes written, by route pattern and method (route /v1/events/export: CSV export bytes).",
	}, []string{"route", "method"})
	var err error
	if requests, err = register(reg, requests); err != nil {
		return nil, err
	}
	if duration, err = register(reg, duration); err != nil {
		return nil, err
	}
	if bytes, err = register(reg, bytes); err != nil {
		return nil, err
	}
	return &HTTP{requests: requests, duration: duration, bytes: bytes}, nil
}

// register registers c on reg, or returns the equal collector already there.
func register[C prometheus.Collector](reg *prometheus.Registry, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// RegisterRuntime adds the Go runtime and process collectors to reg,
// tolerating their being registered already.
func RegisterRuntime(reg *prometheus.Registry) error {
	if _, err := register(reg, collectors.NewGoCollector()); err != nil {
		return err
	}
	if _, err := register(reg, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return err
	}
	return nil
}

// Middleware counts and times every request that passes through it.
func (m *HTTP) Middleware() gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		route := c.FullPath()
		if route == "" {
			route = UnmatchedRoute
		}
		method := Method(c.Request.Method)
		m.requests.WithLabelValues(route, method, strconv.Itoa(c.Writer.Status())).Inc()
		m.duration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
		// Size is -1 until something is written.
		if n := c.Writer.Size(); n > 0 {
			m.bytes.WithLabelValues(route, method).Add(float64(n))
		}
	}
}

// Method returns m if it is a standard HTTP method, else "OTHER", so a
// client cannot mint label values.
func Method(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
