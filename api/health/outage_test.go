package health

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// tcpProxy forwards TCP connections from a loopback port to upstream and can
// cut them all (a database outage as the service sees it) and come back on
// the same port.
type tcpProxy struct {
	t        *testing.T
	upstream string
	addr     string

	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(t *testing.T, upstream string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{t: t, upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.up("127.0.0.1:0")
	t.Cleanup(func() {
		p.down()
		p.wg.Wait()
	})
	return p
}

// up listens on addr and forwards every accepted connection.
func (p *tcpProxy) up(addr string) {
	p.t.Helper()
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", addr)
	require.NoError(p.t, err)
	p.mu.Lock()
	p.l, p.addr = l, l.Addr().String()
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed by down
			}
			p.forward(c)
		}
	}()
}

func (p *tcpProxy) forward(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		defer p.wg.Done()
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	p.wg.Add(2)
	go pipe(u, c)
	go pipe(c, u)
}

// down stops listening and cuts every forwarded connection.
func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		_ = p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// TestReadinessFollowsDatabaseOutage: /readyz is 200 while the database
// answers, 503 as soon as it does not (the pool's open connections cut, new
// ones refused), and 200 again once it is back, with no restart; /healthz
// stays 200 throughout.
func TestReadinessFollowsDatabaseOutage(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig(testdb.NewURL(t))
	require.NoError(t, err)
	upstream := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
	proxy := newTCPProxy(t, upstream)
	host, port, err := net.SplitHostPort(proxy.addr)
	require.NoError(t, err)
	portN, err := strconv.ParseUint(port, 10, 16)
	require.NoError(t, err)
	cfg.ConnConfig.Host = host
	cfg.ConnConfig.Port = uint16(portN)
	// sslmode=prefer (the default) adds a fallback to the same server
	// without TLS, which would bypass the proxy once it is down.
	cfg.ConnConfig.Fallbacks = nil
	cfg.ConnConfig.ConnectTimeout = time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	get := serve(t, pool)

	code, body := get("/readyz")
	require.Equal(t, http.StatusOK, code, body)

	addr := proxy.addr
	proxy.down()
	// The first ping may pick a connection that is already dead; either way
	// the answer must turn to 503 and stay there while the database is gone.
	require.Eventually(t, func() bool {
		code, _ := get("/readyz")
		return code == http.StatusServiceUnavailable
	}, 10*time.Second, 50*time.Millisecond)
	code, body = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	require.Contains(t, body, `"code":"unavailable"`)
	require.Contains(t, body, "unreachable")
	code, _ = get("/healthz")
	require.Equal(t, http.StatusOK, code, "liveness does not depend on the database")

	proxy.up(addr)
	require.Eventually(t, func() bool {
		code, _ := get("/readyz")
		return code == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond, "ready again once the database is back")
}
