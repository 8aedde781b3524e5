package clientip

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/outbox"
)

func prefixes(t testing.TB, cidrs ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, c := range cidrs {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}

func TestClientIP(t *testing.T) {
	t.Parallel()
	// The load balancers live in 10.0.0.0/16 and fd00::/8; 10.0.0.0/16 is
	// also where a second hop (an internal ingress) lives.
	trusted := prefixes(t, "10.0.0.0/16", "fd00::/8")

	tests := []struct {
		name    string
		trusted []netip.Prefix
		remote  string
		xff     []string // header lines, in order
		want    string   // "" means the zero Addr
	}{
		{name: "no proxies: socket", remote: "203.0.113.7:5555", want: "203.0.113.7"},
		{name: "no proxies: header ignored", remote: "203.0.113.7:5555", xff: []string{"198.51.100.1"}, want: "203.0.113.7"},
		{name: "no proxies: ipv6 socket", remote: "[2001:db8::1]:443", want: "2001:db8::1"},
		{name: "no proxies: mapped socket unmapped", remote: "[::ffff:203.0.113.7]:443", want: "203.0.113.7"},
		{name: "no proxies: link-local zone dropped", remote: "[fe80::1%eth0]:443", want: "fe80::1"},
		{name: "bare remote addr", remote: "203.0.113.7", want: "203.0.113.7"},
		{name: "unparsable remote addr", remote: "@", want: ""},

		{name: "ALB: client, proxy appended by LB", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7"}, want: "203.0.113.7"},
		{name: "two trusted hops", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7, 10.0.2.9"}, want: "203.0.113.7"},
		{name: "client-supplied left-most entry not believed", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"1.1.1.1, 203.0.113.7"}, want: "203.0.113.7"},
		{name: "spoofed trusted-looking left entry still not believed", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"10.0.9.9, 203.0.113.7, 10.0.2.9"}, want: "203.0.113.7"},
		{name: "several header lines are one list", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"1.1.1.1", "203.0.113.7, 10.0.2.9"}, want: "203.0.113.7"},
		{name: "several header lines, client in the last", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"1.1.1.1, 10.0.2.9", "203.0.113.7"}, want: "203.0.113.7"},
		{name: "header from untrusted socket ignored", trusted: trusted, remote: "198.51.100.9:1234",
			xff: []string{"203.0.113.7"}, want: "198.51.100.9"},
		{name: "trusted socket without header", trusted: trusted, remote: "10.0.1.5:40000", want: "10.0.1.5"},
		{name: "all entries trusted: left-most", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"10.0.3.3, 10.0.2.2"}, want: "10.0.3.3"},
		{name: "ipv6 client through ipv6 LB", trusted: trusted, remote: "[fd00::5]:40000",
			xff: []string{"2001:db8::7"}, want: "2001:db8::7"},
		{name: "mapped entry unmapped", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"::ffff:203.0.113.7"}, want: "203.0.113.7"},
		{name: "mapped socket in trusted v4 range", trusted: trusted, remote: "[::ffff:10.0.1.5]:40000",
			xff: []string{"203.0.113.7"}, want: "203.0.113.7"},
		{name: "mapped trusted prefix", trusted: prefixes(t, "::ffff:10.0.0.0/112"), remote: "10.0.1.5:1",
			xff: []string{"203.0.113.7"}, want: "203.0.113.7"},
		{name: "spaces and tabs around entries", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{" 1.1.1.1 ,\t203.0.113.7 "}, want: "203.0.113.7"},

		// A port, as some load balancers add it (Azure Application
		// Gateway), is dropped.
		{name: "ip:port entry", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7:5555"}, want: "203.0.113.7"},
		{name: "[v6]:port entry", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"[2001:db8::7]:443"}, want: "2001:db8::7"},
		{name: "ip:port behind trusted ip:port hops", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"1.1.1.1:1, 203.0.113.7:5555, 10.0.2.9:80, [fd00::9]:80"}, want: "203.0.113.7"},
		{name: "mapped [v6]:port entry unmapped", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"[::ffff:203.0.113.7]:443"}, want: "203.0.113.7"},
		{name: "trusted-looking ip:port left of the client not believed", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"10.0.9.9:1, 203.0.113.7:5555"}, want: "203.0.113.7"},
		{name: "bare ipv6 colons are not a port", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"2001:db8::1:443"}, want: "2001:db8::1:443"},

		// An entry that cannot be read where the client should be: the
		// client is unknown (null), never the proxy's own address.
		{name: "bracketed ipv6 without port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"[2001:db8::7]"}, want: ""},
		{name: "bracketed ipv4 with port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"[203.0.113.7]:80"}, want: ""},
		{name: "unbracketed ipv6 with port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"::ffff:203.0.113.7:80"}, want: ""},
		{name: "empty port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7:"}, want: ""},
		{name: "port out of range: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7:65536"}, want: ""},
		{name: "hostname:port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"client.example:80"}, want: ""},
		{name: "garbage left of client is never reached", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"not-an-ip, 203.0.113.7"}, want: "203.0.113.7"},
		{name: "garbage behind a trusted hop: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"unknown, 10.0.2.9"}, want: ""},
		{name: "empty entry: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7,"}, want: ""},
		{name: "zone: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"fe80::1%eth0"}, want: ""},
		{name: "zone with port: unknown", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"[fe80::1%eth0]:80"}, want: ""},
		{name: "garbage from an untrusted socket ignored", trusted: trusted, remote: "198.51.100.9:1234",
			xff: []string{"unknown"}, want: "198.51.100.9"},

		// A blank header line holds no entry.
		{name: "empty header line: the trusted peer", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{""}, want: "10.0.1.5"},
		{name: "empty header line after the client", trusted: trusted, remote: "10.0.1.5:40000",
			xff: []string{"203.0.113.7", " "}, want: "203.0.113.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewResolver(tt.trusted)
			require.NoError(t, err)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			// Never read, whatever the configuration.
			req.Header.Set("X-Real-IP", "6.6.6.6")
			req.Header.Set("Forwarded", "for=6.6.6.6")
			got := r.ClientIP(req)
			if tt.want == "" {
				require.False(t, got.IsValid(), "got %s", got)
				return
			}
			require.Equal(t, netip.MustParseAddr(tt.want), got)
		})
	}
}

func TestNewResolverRejectsInvalidPrefix(t *testing.T) {
	t.Parallel()
	_, err := NewResolver([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), {}})
	require.ErrorContains(t, err, "trusted proxy 1")
}

func TestZeroResolverTrustsNothing(t *testing.T) {
	t.Parallel()
	var r *Resolver
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.RemoteAddr = "203.0.113.7:1"
	req.Header.Set("X-Forwarded-For", "1.1.1.1")
	require.Equal(t, netip.MustParseAddr("203.0.113.7"), r.ClientIP(req))
}

func TestRequestContext(t *testing.T) {
	t.Parallel()
	gin.SetMode(gin.ReleaseMode)
	r, err := NewResolver(prefixes(t, "10.0.0.0/8"))
	require.NoError(t, err)

	serve := func(t *testing.T, mutate func(*http.Request)) (outbox.RequestInfo, *httptest.ResponseRecorder) {
		t.Helper()
		engine := gin.New()
		var got outbox.RequestInfo
		engine.Use(RequestContext(r, "web"))
		engine.GET("/", func(c *gin.Context) {
			info, ok := outbox.RequestInfoFrom(c.Request.Context())
			require.True(t, ok)
			require.Equal(t, info.RequestID, RequestID(c))
			got = info
		})
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.RemoteAddr = "10.1.2.3:999"
		req.Header.Set("User-Agent", "curl/8.0")
		mutate(req)
		w := httptest.NewRecorder()
		engine.ServeHTTP(w, req)
		return got, w
	}

	t.Run("fields and echoed request id", func(t *testing.T) {
		t.Parallel()
		info, w := serve(t, func(req *http.Request) {
			req.Header.Set("X-Forwarded-For", "9.9.9.9, 203.0.113.7")
			req.Header.Set(RequestIDHeader, "req_8f2c")
		})
		require.Equal(t, outbox.RequestInfo{Source: "web", IP: "203.0.113.7", UserAgent: "curl/8.0", RequestID: "req_8f2c"}, info)
		require.Equal(t, "req_8f2c", w.Header().Get(RequestIDHeader))
	})
	t.Run("ip:port entry", func(t *testing.T) {
		t.Parallel()
		info, _ := serve(t, func(req *http.Request) { req.Header.Set("X-Forwarded-For", "203.0.113.7:5555") })
		require.Equal(t, "203.0.113.7", info.IP)
	})
	t.Run("unparsable client entry: no IP, not the proxy's", func(t *testing.T) {
		t.Parallel()
		info, _ := serve(t, func(req *http.Request) { req.Header.Set("X-Forwarded-For", "unknown") })
		require.Equal(t, "", info.IP)
		require.Equal(t, "web", info.Source)
	})
	for name, bad := range map[string]string{
		"too long":    strings.Repeat("a", 129),
		"space":       "req 1",
		"control":     "req\x01",
		"non-ascii":   "réq",
		"empty":       "",
		"newline-ish": "a\tb",
	} {
		t.Run("generated when "+name, func(t *testing.T) {
			t.Parallel()
			info, w := serve(t, func(req *http.Request) { req.Header.Set(RequestIDHeader, bad) })
			require.NotEqual(t, bad, info.RequestID)
			require.Len(t, info.RequestID, 36) // a UUID
			require.Equal(t, info.RequestID, w.Header().Get(RequestIDHeader))
		})
	}
	t.Run("128 printable characters kept", func(t *testing.T) {
		t.Parallel()
		id := strings.Repeat("~", 128)
		info, _ := serve(t, func(req *http.Request) { req.Header.Set(RequestIDHeader, id) })
		require.Equal(t, id, info.RequestID)
	})
	// Only a trusted proxy may name the request: a client talking to the
	// service directly cannot plant an id on the events it causes.
	for name, remote := range map[string]string{
		"untrusted peer":         "203.0.113.9:5555",
		"untrusted behind XFF":   "198.51.100.1:80",
		"unparsable socket peer": "pipe",
	} {
		t.Run("generated for "+name, func(t *testing.T) {
			t.Parallel()
			info, w := serve(t, func(req *http.Request) {
				req.RemoteAddr = remote
				req.Header.Set("X-Forwarded-For", "10.0.0.1")
				req.Header.Set(RequestIDHeader, "req_planted")
			})
			require.NotEqual(t, "req_planted", info.RequestID)
			require.Len(t, info.RequestID, 36) // a UUID
			require.Equal(t, info.RequestID, w.Header().Get(RequestIDHeader))
		})
	}
	t.Run("each request gets its own generated id", func(t *testing.T) {
		t.Parallel()
		a, _ := serve(t, func(*http.Request) {})
		b, _ := serve(t, func(*http.Request) {})
		require.NotEqual(t, a.RequestID, b.RequestID)
	})
}

// FuzzWalk checks the X-Forwarded-For walk on arbitrary header lines: it
// never panics; it returns the socket peer only when the lines hold no
// entry; otherwise every entry right of the result is a trusted, parsable
// hop, and the result is the first untrusted entry from the right, the
// left-most entry when all are trusted, or no address when an unparsable
// entry comes first. It also checks parseEntry: an accepted entry is a
// canonical address, accepted again bare and with a port.
func FuzzWalk(f *testing.F) {
	f.Add("203.0.113.7", "")
	f.Add("1.1.1.1, 203.0.113.7, 10.0.2.9", "")
	f.Add("1.1.1.1", "203.0.113.7")
	f.Add("203.0.113.7:80", "")
	f.Add("[2001:db8::1], 10.0.0.1", "")
	f.Add("::ffff:10.0.0.1, ::ffff:203.0.113.7", "")
	f.Add(",,,", " , ")
	f.Add("fe80::1%eth0", "")
	f.Add("[2001:db8::7]:443", "10.0.0.1:80")
	f.Add("203.0.113.7:65536", "")
	f.Add("[203.0.113.7]:80", "[fd00::1]:80")
	f.Add("unknown", "")
	r, err := NewResolver(prefixes(f, "10.0.0.0/8", "fd00::/8"))
	if err != nil {
		f.Fatal(err)
	}
	peer := netip.MustParseAddr("10.9.9.9")
	f.Fuzz(func(t *testing.T, line1, line2 string) {
		got := r.walk(peer, []string{line1, line2})
		if got.IsValid() && (got.Is4In6() || got.Zone() != "") {
			t.Fatalf("non-canonical result %v", got)
		}
		var entries []string
		for _, l := range []string{line1, line2} {
			if strings.Trim(l, " \t") != "" {
				entries = append(entries, strings.Split(l, ",")...)
			}
		}
		if len(entries) == 0 {
			if got != peer {
				t.Fatalf("no entries in %q %q, but %v is not the peer", line1, line2, got)
			}
			return
		}
		for i := len(entries) - 1; i >= 0; i-- {
			a, ok := parseEntry(entries[i])
			if !ok {
				if got.IsValid() {
					t.Fatalf("walked past garbage %q to %v", entries[i], got)
				}
				return
			}
			if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
				t.Fatalf("parseEntry(%q) = %v, not canonical", entries[i], a)
			}
			for _, again := range []string{a.String(), netip.AddrPortFrom(a, 80).String()} {
				if b, ok := parseEntry(again); !ok || b != a {
					t.Fatalf("parseEntry(%q) = %v, %v; want %v", again, b, ok, a)
				}
			}
			if !r.Trusted(a) || i == 0 {
				if got != a {
					t.Fatalf("walk(%q %q) = %v, want %v", line1, line2, got, a)
				}
				return
			}
		}
	})
}
