package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Bounds of the waits on a service process.
const (
	// readyTimeout bounds a start (migrations included) until /readyz is 200.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	stopTimeout = 40 * time.Second
)

// service is one auditlog binary run as a subprocess, configured only through
// AUDITLOG_* environment variables, in an empty working directory (so no
// config.yaml is read). It can be started again after it exits; its stderr
// (the JSON log) is appended to one file across runs.
type service struct {
	t       testing.TB
	name    string
	env     []string
	addr    string
	dir     string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current process has exited
	waitErr error         // its exit status, once exited
	starts  int
}

// newService prepares (does not start) a service on dbURL listening on a
// free loopback port. settings override the defaults: relay poll 50ms, log
// level warn, 6 pooled connections (the test server is shared by parallel
// tests of many packages).
func newService(t testing.TB, name, dbURL string, settings map[string]string) *service {
	t.Helper()
	port := freePort(t)
	vars := map[string]string{
		"AUDITLOG_DATABASE_URL":        dbURL,
		"AUDITLOG_DATABASE_MAX_CONNS":  "6",
		"AUDITLOG_HTTP_ADDR":           "127.0.0.1:" + strconv.Itoa(port),
		"AUDITLOG_RELAY_POLL_INTERVAL": "50ms",
		"AUDITLOG_LOG_LEVEL":           "warn",
	}
	for k, v := range settings {
		vars[k] = v
	}
	var env []string
	for _, kv := range os.Environ() {
		// Our own settings only: a stray AUDITLOG_ variable would be refused
		// as unknown or change the configuration, PG* could redirect pgx.
		if strings.HasPrefix(kv, "AUDITLOG_") || strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+vars[k])
	}
	dir := t.TempDir()
	s := &service{
		t:       t,
		name:    name,
		env:     env,
		addr:    "127.0.0.1:" + strconv.Itoa(port),
		dir:     dir,
		logPath: filepath.Join(dir, "service.log"),
	}
	t.Cleanup(s.cleanup)
	return s
}

// startService prepares a service, starts it and waits until it is ready.
func startService(t testing.TB, name, dbURL string, settings map[string]string) *service {
	t.Helper()
	s := newService(t, name, dbURL, settings)
	s.Start()
	s.WaitReady(readyTimeout)
	return s
}

// Start launches the process; it does not wait for readiness.
func (s *service) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		select {
		case <-s.exited:
		default:
			s.t.Fatalf("%s: already running", s.name)
		}
	}
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(s.t, err)
	s.starts++
	fmt.Fprintf(logFile, "=== start %d of %s at %s\n", s.starts, s.name, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(binPath, "serve")
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	require.NoError(s.t, cmd.Start(), "%s: starting the binary", s.name)
	_ = logFile.Close() // the child holds its own descriptor
	exited := make(chan struct{})
	s.cmd, s.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(exited)
	}()
}

// WaitReady polls /readyz until it answers 200, failing the test if the
// process exits or timeout passes first.
func (s *service) WaitReady(timeout time.Duration) time.Duration {
	s.t.Helper()
	began := time.Now()
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		select {
		case <-s.exitedChan():
			s.t.Fatalf("%s exited before becoming ready (%v); log:\n%s", s.name, s.exitErr(), s.LogTail(40))
		default:
		}
		resp, err := client.Get(s.URL("/readyz"))
		if err == nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(began)
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body.String())
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not ready after %s (last: %s); log:\n%s", s.name, timeout, last, s.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *service) exitedChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exited
}

func (s *service) exitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waitErr
}

// Running reports whether the process is alive.
func (s *service) Running() bool {
	ch := s.exitedChan()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// PID is the process id of the current process.
func (s *service) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *service) Kill() {
	s.t.Helper()
	s.signal(syscall.SIGKILL, 10*time.Second)
	err := s.exitErr()
	var exitErr *exec.ExitError
	require.True(s.t, errors.As(err, &exitErr), "%s: expected death by signal, got %v", s.name, err)
	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(s.t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "%s: expected SIGKILL, got %v", s.name, err)
}

// Stop sends SIGTERM and waits for a graceful exit; it reports the exit error.
func (s *service) Stop() error {
	s.t.Helper()
	s.signal(syscall.SIGTERM, stopTimeout)
	return s.exitErr()
}

func (s *service) signal(sig syscall.Signal, timeout time.Duration) {
	s.t.Helper()
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
		s.t.Errorf("%s: did not exit within %s of %v; killed", s.name, timeout, sig)
	}
}

func (s *service) cleanup() {
	if s.Running() {
		if err := s.Stop(); err != nil {
			s.t.Errorf("%s: graceful stop at cleanup: %v", s.name, err)
		}
	}
	if s.t.Failed() {
		s.t.Logf("%s log (tail):\n%s", s.name, s.LogTail(60))
	}
}

// URL is the service's URL for path.
func (s *service) URL(path string) string { return "http://" + s.addr + path }

// Log returns everything the service has logged so far.
func (s *service) Log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// LogTail returns the last n lines of the log.
func (s *service) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(s.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LogLines returns the log lines containing every one of subs.
func (s *service) LogLines(subs ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.Log()))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
next:
	for sc.Scan() {
		for _, sub := range subs {
			if !strings.Contains(sc.Text(), sub) {
				continue next
			}
		}
		out = append(out, sc.Text())
	}
	return out
}

// RSS returns the resident set size of the current process, in bytes.
func (s *service) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Metrics scrapes /metrics.
func (s *service) Metrics(ctx context.Context) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL("/metrics"), nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// freePort asks the kernel for a free TCP port on 127.0.0.1. Another process
// could take it before the service binds; rare enough for tests.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}
