package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/auditlog/auditlog/outbox"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/robfig/cron/v3"
)

// FieldError is one invalid setting; Key is its YAML dotted key, with an
// index for a list item ("http.trusted_proxies[1]").
type FieldError struct {
	Key     string
	Message string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Message }

// ScheduleParser parses retention.schedule: the standard five cron fields
// plus descriptors (@hourly, @every 1h). Partition maintenance must use the
// same parser so a spec that validates here also runs there.
var ScheduleParser = cron.NewParser(
	cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor,
)

// Validate checks every setting and returns all problems at once, joined;
// each is a *FieldError naming its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &FieldError{Key: key, Message: fmt.Sprintf(format, args...)})
	}
	intRange := func(key string, v, lo, hi int64) {
		if v < lo || v > hi {
			bad(key, "must be between %d and %d, got %d", lo, hi, v)
		}
	}

	// database
	if c.Database.URL != "" {
		// pgconn redacts the password from its parse errors.
		if _, err := pgconn.ParseConfig(c.Database.URL); err != nil {
			bad("database.url", "not a PostgreSQL connection string: %v", err)
		}
	} else if c.Database.DataDir == "" {
		bad("database.data_dir", "must be set when database.url is empty (the embedded cluster keeps its data there)")
	}
	intRange("database.embedded_port", int64(c.Database.EmbeddedPort), 1, 65535)
	intRange("database.max_conns", int64(c.Database.MaxConns), 1, 1000)

	// http
	if err := checkListenAddr(c.HTTP.Addr); err != nil {
		bad("http.addr", "%v", err)
	}
	for i, p := range c.HTTP.TrustedProxies {
		if _, err := parseProxy(p); err != nil {
			bad(fmt.Sprintf("http.trusted_proxies[%d]", i), "%v", err)
		}
	}
	if d := c.HTTP.ShutdownGrace; d < 0 || d > time.Hour {
		bad("http.shutdown_grace", "must be between 0s and 1h, got %s", d)
	}

	// relay
	intRange("relay.batch_size", int64(c.Relay.BatchSize), 1, 10000)
	if d := c.Relay.PollInterval; d < time.Millisecond || d > time.Hour {
		bad("relay.poll_interval", "must be between 1ms and 1h, got %s", d)
	}

	// retention
	intRange("retention.days", int64(c.Retention.Days), 1, 36500)
	if p := c.Retention.PartitionInterval; p != PartitionIntervalDay && p != PartitionIntervalMonth {
		bad("retention.partition_interval", `must be "day" or "month", got %q`, p)
	}
	intRange("retention.premake", int64(c.Retention.Premake), 0, 1000)
	if _, err := ScheduleParser.Parse(c.Integrity.CheckpointSchedule); err != nil {
		bad("integrity.checkpoint_schedule", "bad cron spec: %v", err)
	}
	if _, err := ScheduleParser.Parse(c.Retention.Schedule); err != nil {
		bad("retention.schedule", "bad cron spec: %v", err)
	}

	// ingest
	intRange("ingest.max_batch", int64(c.Ingest.MaxBatch), 1, 100000)
	intRange("ingest.max_body_bytes", c.Ingest.MaxBodyBytes, 1024, 1<<30)

	// events
	for i, s := range c.Events.NullIPSources {
		if !outbox.ValidSource(s) {
			bad(fmt.Sprintf("events.null_ip_sources[%d]", i), "%q is not a source name (1-32 of a-z 0-9 _)", s)
		}
	}
	intRange("events.max_details_bytes", int64(c.Events.MaxDetailsBytes), 2, 16<<20)

	// log
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", `must be "debug", "info", "warn" or "error", got %q`, c.Log.Level)
	}
	if f := c.Log.Format; f != "json" && f != "text" {
		bad("log.format", `must be "json" or "text", got %q`, f)
	}

	return errors.Join(errs...)
}

// checkListenAddr accepts host:port with an optional host and a numeric port.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \":8080\"): %v", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be a number 0-65535", addr)
	}
	return nil
}

// parseProxy reads a trusted_proxies entry: a CIDR, or a single address
// taken as /32 (IPv4) or /128 (IPv6). IPv4-mapped IPv6 addresses become
// IPv4, as client addresses are compared in that form.
func parseProxy(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// TrustedProxyPrefixes returns http.trusted_proxies parsed and masked
// (10.1.2.3/8 becomes 10.0.0.0/8). Entries that do not parse are left out;
// Validate reports them.
func (c Config) TrustedProxyPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.HTTP.TrustedProxies))
	for _, s := range c.HTTP.TrustedProxies {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
