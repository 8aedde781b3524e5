// Package clientip finds the address of the client behind a request,
// believing X-Forwarded-For only from trusted proxies, and puts the request's
// audit context (source, IP, user agent, request id) on it.
//
// # Resolution rule
//
// The socket peer (http.Request.RemoteAddr) is the only address a client
// cannot forge. When it lies in a trusted proxy range, the X-Forwarded-For
// header lines are read as one comma-separated list and walked from the right:
// entries in trusted ranges are hops of our own infrastructure and are
// skipped; the first entry that is not trusted is the client. Entries to the
// left of it were supplied by the client itself and are never believed.
//
// An entry is an IPv4 or IPv6 address, optionally with the port some load
// balancers add (Azure Application Gateway writes "203.0.113.7:5555" and
// "[2001:db8::7]:443"); the port is dropped. An entry that cannot be read as
// one (empty, a zone, a hostname, "unknown", "[v6]" without a port) ends the
// walk with no address: the request's IP is unknown and is recorded as null.
// The proxy's own address is not used in its place, since that would record
// the load balancer as the client, and no placeholder is invented. Blank
// header lines hold no entry and are skipped. With no entry at all, the
// trusted peer itself is the client (a request the proxy made on its own).
// X-Real-IP and Forwarded are never read.
//
// IPv4-mapped IPv6 addresses are unmapped (::ffff:192.0.2.1 is 192.0.2.1).
package clientip

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Resolver resolves client addresses. The zero value trusts no proxy.
type Resolver struct {
	trusted []netip.Prefix
}

// NewResolver returns a Resolver that believes X-Forwarded-For only from
// socket peers in trusted. An empty list means the socket address is always
// the client.
func NewResolver(trusted []netip.Prefix) (*Resolver, error) {
	r := &Resolver{}
	for i, p := range trusted {
		if !p.IsValid() {
			return nil, fmt.Errorf("clientip: trusted proxy %d (%q) is not a valid CIDR", i, p.String())
		}
		// A prefix of a mapped address would never match an unmapped address.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		r.trusted = append(r.trusted, p.Masked())
	}
	return r, nil
}

// Trusted reports whether a is in a trusted proxy range.
func (r *Resolver) Trusted(a netip.Addr) bool {
	if r == nil {
		return false
	}
	a = a.Unmap()
	for _, p := range r.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ClientIP returns the client's address for req by the package's rule. It
// returns the zero Addr when the client is unknown: the socket address
// cannot be parsed (e.g. a request not from a network socket), or the
// X-Forwarded-For entry that names the client cannot.
func (r *Resolver) ClientIP(req *http.Request) netip.Addr {
	peer := socketAddr(req.RemoteAddr)
	if !peer.IsValid() || !r.Trusted(peer) {
		return peer
	}
	return r.walk(peer, req.Header.Values("X-Forwarded-For"))
}

// walk applies the right-to-left rule to the X-Forwarded-For header lines,
// starting from the trusted socket peer. It returns the zero Addr when it
// reaches an entry it cannot parse before an untrusted one.
func (r *Resolver) walk(peer netip.Addr, lines []string) netip.Addr {
	last := peer
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Trim(lines[i], " \t") == "" {
			continue // an empty header holds no entry
		}
		entries := strings.Split(lines[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, ok := parseEntry(entries[j])
			if !ok {
				// This entry stands where the client's address should
				// be: the client is unknown. The nearest trusted hop
				// would record our own proxy as the client.
				return netip.Addr{}
			}
			if !r.Trusted(a) {
				return a
			}
			last = a
		}
	}
	return last
}

// parseEntry parses one X-Forwarded-For entry, surrounding spaces allowed:
// a bare IPv4 or IPv6 address, or one with a port ("203.0.113.7:5555",
// "[2001:db8::7]:443"), whose port is dropped. Zones are refused.
func parseEntry(s string) (netip.Addr, bool) {
	s = strings.Trim(s, " \t")
	// A bare IPv6 address first: its colons are not a port.
	a, err := netip.ParseAddr(s)
	if err != nil {
		// ParseAddrPort wants brackets around IPv6 and only there, and a
		// decimal port of 0-65535.
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// socketAddr parses RemoteAddr ("ip:port", or a bare ip as some test
// harnesses set it).
func socketAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	// The zone of a link-local peer is local routing detail, not identity.
	return a.WithZone("").Unmap()
}
