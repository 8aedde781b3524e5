package e2e

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// metrics is a scrape of /metrics: each sample line's value by its full
// series text (name plus labels, as printed).
type metrics map[string]float64

// parseMetrics reads the Prometheus text format; only what these tests need
// (sample lines "series value"), comments skipped.
func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics: malformed line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: value of %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// Sum adds up every series of the metric name (all label sets); ok is false
// when there is none.
func (m metrics) Sum(name string) (sum float64, ok bool) {
	for series, v := range m {
		n, _, _ := strings.Cut(series, "{")
		if n == name {
			sum += v
			ok = true
		}
	}
	return sum, ok
}

// Value is Sum without the ok, 0 when absent.
func (m metrics) Value(name string) float64 {
	v, _ := m.Sum(name)
	return v
}

// Matching adds up the series of name whose label text contains every one of
// labels (e.g. `status="503"`).
func (m metrics) Matching(name string, labels ...string) float64 {
	var sum float64
next:
	for series, v := range m {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				continue next
			}
		}
		sum += v
	}
	return sum
}
