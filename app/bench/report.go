package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// report writes one key=value line per figure as soon as it is known, and
// the target verdicts at the end.
type report struct {
	w       io.Writer
	targets []string
}

// num writes key=v with prec decimals.
func (r *report) num(key string, v float64, prec int) {
	fmt.Fprintf(r.w, "%s=%s\n", key, strconv.FormatFloat(v, 'f', prec, 64))
}

// text writes key=v.
func (r *report) text(key, v string) { fmt.Fprintf(r.w, "%s=%s\n", key, v) }

// target records the verdict of a target for the final lines.
func (r *report) target(name string, pass bool) {
	v := "miss"
	if pass {
		v = "pass"
	}
	r.targets = append(r.targets, "target."+name+"="+v)
}

// flushTargets writes every target verdict.
func (r *report) flushTargets() {
	for _, t := range r.targets {
		fmt.Fprintln(r.w, t)
	}
}

// runs collects one figure per run; the report gives their median.
type runs map[string][]float64

func (rs runs) add(key string, v float64) { rs[key] = append(rs[key], v) }

// median returns the median of key's values, or 0 when it has none.
func (rs runs) median(key string) float64 { return median(rs[key]) }

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratio returns a/b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// perSecond returns n / d in events per second.
func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// readRSS returns this process's resident set size (VmRSS) in bytes, or 0
// where /proc is not available.
func readRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			fields := strings.Fields(string(rest))
			if len(fields) >= 1 {
				kb, _ := strconv.ParseInt(fields[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// Go runtime metrics sampled during an export.
const (
	metricHeapObjects = "/memory/classes/heap/objects:bytes"
	metricHeapAllocs  = "/gc/heap/allocs:bytes"
)

func readHeap() (objects, allocs uint64) {
	s := []metrics.Sample{{Name: metricHeapObjects}, {Name: metricHeapAllocs}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		objects = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		allocs = s[1].Value.Uint64()
	}
	return objects, allocs
}

// memSampler records the peak RSS and Go heap of this process, sampled
// every interval between start and stop.
type memSampler struct {
	stop     chan struct{}
	done     sync.WaitGroup
	peakRSS  int64
	peakHeap uint64
}

func startMemSampler(interval time.Duration) *memSampler {
	s := &memSampler{stop: make(chan struct{})}
	s.sample()
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *memSampler) sample() {
	if rss := readRSS(); rss > s.peakRSS {
		s.peakRSS = rss
	}
	if h, _ := readHeap(); h > s.peakHeap {
		s.peakHeap = h
	}
}

// finish stops sampling, takes a last sample and returns the peaks.
func (s *memSampler) finish() (peakRSS int64, peakHeap uint64) {
	close(s.stop)
	s.done.Wait()
	s.sample()
	return s.peakRSS, s.peakHeap
}

// loadAverage returns the 1-minute load average from /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return f[0] + "," + f[1] + "," + f[2]
}

// memTotalMiB returns MemTotal from /proc/meminfo in MiB, or 0.
func memTotalMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb / 1024
			}
		}
	}
	return 0
}

const mib = 1 << 20
