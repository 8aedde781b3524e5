package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// writeFile writes a config file into a fresh temp dir and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestDefaultIsValid(t *testing.T) {
	t.Parallel()
	require.NoError(t, Default().Validate())
}

func TestDefaultNullIPSourcesNotShared(t *testing.T) {
	t.Parallel()
	a := Default()
	a.Events.NullIPSources[0] = "changed"
	require.Equal(t, "slack", Default().Events.NullIPSources[0])
}

// The config.yaml at the repository root documents every key with its
// default: loading it must give exactly Default(), and it must spell out
// every key.
func TestRepoConfigYAMLListsEveryKeyWithDefault(t *testing.T) {
	t.Parallel()
	const path = "../../config.yaml"
	cfg, err := Load(path, nil)
	require.NoError(t, err)
	require.Equal(t, Default(), cfg)

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var doc map[string]map[string]any
	require.NoError(t, yaml.Unmarshal(data, &doc))
	for _, key := range Keys() {
		section, name, _ := strings.Cut(key, ".")
		require.Contains(t, doc[section], name, "config.yaml lacks %s", key)
	}
}

func TestLoadFileThenEnvPrecedence(t *testing.T) {
	t.Parallel()
	path := writeFile(t, `
http:
  addr: ":9000"
relay:
  batch_size: 500
  poll_interval: 1s
`)
	cfg, err := Load(path, []string{
		"AUDITLOG_HTTP_ADDR=127.0.0.1:9100", // env beats file
		"PATH=/usr/bin",                     // not ours: ignored
		"auditlog_http_addr=ignored",        // prefix is case-sensitive
		"AUDITLOG_TEST_DATABASE_URL=x",      // reserved for test tooling
	})
	require.NoError(t, err)

	want := Default()
	want.HTTP.Addr = "127.0.0.1:9100"
	want.Relay.BatchSize = 500
	want.Relay.PollInterval = time.Second
	require.Equal(t, want, cfg)
}

func TestLoadEnvEveryType(t *testing.T) {
	t.Parallel()
	cfg, err := Load(writeFile(t, ""), []string{
		"AUDITLOG_DATABASE_URL=postgres://u:secret@db.example:5432/audit",
		"AUDITLOG_HTTP_TRUSTED_PROXIES= 10.0.0.0/8, 192.168.1.7 ,",
		"AUDITLOG_RELAY_POLL_INTERVAL=50ms",
		"AUDITLOG_INGEST_MAX_BODY_BYTES=1048576",
		"AUDITLOG_EXPORT_CSV_FORMULA_GUARD=false",
		"AUDITLOG_EVENTS_NULL_IP_SOURCES=",
		"AUDITLOG_RETENTION_PARTITION_INTERVAL=day",
	})
	require.NoError(t, err)
	require.Equal(t, "postgres://u:secret@db.example:5432/audit", cfg.Database.URL)
	require.Equal(t, []string{"10.0.0.0/8", "192.168.1.7"}, cfg.HTTP.TrustedProxies)
	require.Equal(t, 50*time.Millisecond, cfg.Relay.PollInterval)
	require.Equal(t, int64(1<<20), cfg.Ingest.MaxBodyBytes)
	require.False(t, cfg.Export.CSVFormulaGuard)
	require.Empty(t, cfg.Events.NullIPSources)
	require.Equal(t, "day", cfg.Retention.PartitionInterval)
}

func TestEveryKeyHasAnEnvVariable(t *testing.T) {
	t.Parallel()
	// Setting each key's variable to its default's text must be accepted,
	// which proves the name is recognised.
	for _, key := range Keys() {
		env := EnvName(key)
		require.True(t, strings.HasPrefix(env, "AUDITLOG_"))
		require.False(t, strings.HasPrefix(env, EnvTestPrefix), "%s would be ignored as reserved", env)
		var cfg Config
		var found bool
		for _, s := range settings(&cfg) {
			if s.env == env {
				found = true
			}
		}
		require.True(t, found, "%s → %s not recognised", key, env)
	}
	require.Equal(t, "AUDITLOG_HTTP_TRUSTED_PROXIES", EnvName("http.trusted_proxies"))
	require.Equal(t, "AUDITLOG_EXPORT_CSV_FORMULA_GUARD", EnvName("export.csv_formula_guard"))
}

func TestLoadWithoutPathUsesWorkingDirFile(t *testing.T) {
	// t.Chdir: not parallel.
	dir := t.TempDir()
	t.Chdir(dir)

	cfg, err := Load("", nil)
	require.NoError(t, err, "no config.yaml in the working dir is fine")
	require.Equal(t, Default(), cfg)

	require.NoError(t, os.WriteFile(filepath.Join(dir, DefaultFile), []byte("relay:\n  batch_size: 7\n"), 0o600))
	cfg, err = Load("", nil)
	require.NoError(t, err)
	require.Equal(t, 7, cfg.Relay.BatchSize)
}

func TestLoadExplicitMissingFileIsError(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestLoadEmptyAndCommentOnlyFiles(t *testing.T) {
	t.Parallel()
	for _, content := range []string{"", "# nothing here\n", "http:\n"} {
		cfg, err := Load(writeFile(t, content), nil)
		require.NoError(t, err, "%q", content)
		require.Equal(t, Default(), cfg, "%q", content)
	}
}

func TestLoadNullValueMeansEmpty(t *testing.T) {
	t.Parallel()
	cfg, err := Load(writeFile(t, "http:\n  trusted_proxies:\nevents:\n  null_ip_sources: []\n"), nil)
	require.NoError(t, err)
	require.Empty(t, cfg.HTTP.TrustedProxies)
	require.Empty(t, cfg.Events.NullIPSources)
}

func TestLoadUnknownYAMLKeyIsError(t *testing.T) {
	t.Parallel()
	for content, want := range map[string]string{
		"http:\n  adr: \":80\"\n":      `line 2: unknown key "http.adr"`,
		"htp:\n  addr: \":80\"\n":      `line 1: unknown key "htp"`,
		"relay:\n  batchsize: 10\n":    `unknown key "relay.batchsize"`,
		"retention:\n  Days: 10\n":     `unknown key "retention.Days"`,
		"export:\n  csv_formula: no\n": `unknown key "export.csv_formula"`,
	} {
		_, err := Load(writeFile(t, content), nil)
		require.ErrorContains(t, err, want, "%q", content)
	}
}

func TestLoadBadYAMLValueNamesKey(t *testing.T) {
	t.Parallel()
	for content, want := range map[string]string{
		"relay:\n  batch_size: lots\n":           "line 2: relay.batch_size: cannot unmarshal",
		"relay:\n  poll_interval: 200\n":         "relay.poll_interval: cannot unmarshal",
		"relay:\n  poll_interval: soon\n":        "relay.poll_interval:",
		"http:\n  trusted_proxies: 10.0.0.0/8\n": "http.trusted_proxies: cannot unmarshal",
		"http: [a]\n":                            "http: must be a mapping",
		"- a\n":                                  "top level must be a mapping",
		"relay:\n  batch_size: 1\nrelay:\n  poll_interval: 1s\n": `line 3: key "relay" given twice`,
		"relay:\n  batch_size: 1\n  batch_size: 2\n":             `line 3: key "relay.batch_size" given twice`,
		"a: 1\n---\nb: 2\n":                              "more than one YAML document",
		"export:\n  csv_formula_guard: {a: 1}\n":         "export.csv_formula_guard",
		"relay:\n  batch_size: 1\n   poll_interval: 1\n": "parsing YAML",
	} {
		_, err := Load(writeFile(t, content), nil)
		require.ErrorContains(t, err, want, "%q", content)
	}
}

func TestLoadUnknownEnvVariableIsError(t *testing.T) {
	t.Parallel()
	_, err := Load(writeFile(t, ""), []string{"AUDITLOG_HTTP_ADRESS=:80"})
	require.ErrorContains(t, err, "AUDITLOG_HTTP_ADRESS")
	require.ErrorContains(t, err, "unknown setting")
}

func TestLoadBadEnvValueNamesVariable(t *testing.T) {
	t.Parallel()
	for _, kv := range []string{
		"AUDITLOG_RELAY_BATCH_SIZE=many",
		"AUDITLOG_RELAY_POLL_INTERVAL=200",
		"AUDITLOG_EXPORT_CSV_FORMULA_GUARD=maybe",
		"AUDITLOG_DATABASE_MAX_CONNS=99999999999999999999",
	} {
		_, err := Load(writeFile(t, ""), []string{kv})
		name, _, _ := strings.Cut(kv, "=")
		require.ErrorContains(t, err, "environment variable "+name, kv)
	}
}

func TestLoadRunsValidation(t *testing.T) {
	t.Parallel()
	_, err := Load(writeFile(t, "relay:\n  batch_size: 0\n"), nil)
	require.ErrorContains(t, err, "relay.batch_size: must be between 1 and 10000, got 0")

	_, err = Load(writeFile(t, ""), []string{"AUDITLOG_RETENTION_DAYS=0"})
	require.ErrorContains(t, err, "retention.days: must be between 1 and 36500, got 0")
}

func TestValidateNamesTheKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"bad url", func(c *Config) { c.Database.URL = "postgres://u:pw@host:notaport/db" }, "database.url: not a PostgreSQL connection string"},
		{"no data dir", func(c *Config) { c.Database.DataDir = "" }, "database.data_dir: must be set"},
		{"port", func(c *Config) { c.Database.EmbeddedPort = 70000 }, "database.embedded_port: must be between 1 and 65535, got 70000"},
		{"max conns", func(c *Config) { c.Database.MaxConns = 0 }, "database.max_conns: must be between 1 and 1000, got 0"},
		{"addr no port", func(c *Config) { c.HTTP.Addr = "localhost" }, `http.addr: "localhost" is not host:port`},
		{"addr bad port", func(c *Config) { c.HTTP.Addr = ":http-alt" }, "http.addr:"},
		{"proxy", func(c *Config) { c.HTTP.TrustedProxies = []string{"10.0.0.0/8", "10.0.0/8"} }, `http.trusted_proxies[1]: "10.0.0/8" is not a CIDR`},
		{"proxy zone", func(c *Config) { c.HTTP.TrustedProxies = []string{"fe80::1%eth0"} }, `http.trusted_proxies[0]:`},
		{"negative grace", func(c *Config) { c.HTTP.ShutdownGrace = -time.Second }, "http.shutdown_grace: must be between 0s and 1h, got -1s"},
		{"long grace", func(c *Config) { c.HTTP.ShutdownGrace = 2 * time.Hour }, "http.shutdown_grace: must be between 0s and 1h, got 2h0m0s"},
		{"batch", func(c *Config) { c.Relay.BatchSize = 0 }, "relay.batch_size: must be between 1 and 10000, got 0"},
		{"poll", func(c *Config) { c.Relay.PollInterval = 0 }, "relay.poll_interval: must be between 1ms and 1h, got 0s"},
		{"days", func(c *Config) { c.Retention.Days = -1 }, "retention.days: must be between 1 and 36500, got -1"},
		{"interval", func(c *Config) { c.Retention.PartitionInterval = "week" }, `retention.partition_interval: must be "day" or "month", got "week"`},
		{"premake", func(c *Config) { c.Retention.Premake = -1 }, "retention.premake: must be between 0 and 1000, got -1"},
		{"schedule", func(c *Config) { c.Retention.Schedule = "every hour" }, "retention.schedule: bad cron spec: "},
		{"schedule seconds", func(c *Config) { c.Retention.Schedule = "0 0 * * * *" }, "retention.schedule: bad cron spec: "},
		{"schedule every", func(c *Config) { c.Retention.Schedule = "@every forever" }, "retention.schedule: bad cron spec: "},
		{"max batch", func(c *Config) { c.Ingest.MaxBatch = 0 }, "ingest.max_batch: must be between 1 and 100000, got 0"},
		{"body", func(c *Config) { c.Ingest.MaxBodyBytes = 10 }, "ingest.max_body_bytes: must be between 1024 and 1073741824, got 10"},
		{"null ip source", func(c *Config) { c.Events.NullIPSources = []string{"slack", "Web Hook"} }, `events.null_ip_sources[1]: "Web Hook" is not a source name`},
		{"details", func(c *Config) { c.Events.MaxDetailsBytes = 1 }, "events.max_details_bytes: must be between 2 and 16777216, got 1"},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, `log.level: must be`},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, `log.format: must be "json" or "text", got "xml"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			require.ErrorContains(t, err, tc.want)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			require.True(t, strings.HasPrefix(tc.want, fe.Key+":"), "key %q", fe.Key)
		})
	}
}

func TestValidateURLErrorHidesPassword(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Database.URL = "postgres://u:hunter2@host:notaport/db"
	err := c.Validate()
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Relay.BatchSize = 0
	c.Retention.PartitionInterval = ""
	err := c.Validate()
	require.ErrorContains(t, err, "relay.batch_size")
	require.ErrorContains(t, err, "retention.partition_interval")
	var keys []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		require.True(t, errors.As(e, &fe))
		keys = append(keys, fe.Key)
	}
	require.Equal(t, []string{"relay.batch_size", "retention.partition_interval"}, keys)
}

func TestValidateAcceptsGoodValues(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Database.URL = "host=localhost port=5432 user=postgres dbname=audit"
	c.HTTP.Addr = "127.0.0.1:0"
	c.HTTP.TrustedProxies = []string{"10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"}
	c.Retention.Schedule = "15 3 * * *"
	c.Retention.PartitionInterval = PartitionIntervalDay
	c.Retention.Premake = 0
	c.Events.NullIPSources = nil
	c.HTTP.ShutdownGrace = 0
	require.NoError(t, c.Validate())
	for _, spec := range []string{"@hourly", "@daily", "@every 30m", "*/5 * * * *", "CRON_TZ=Europe/Paris 0 4 * * *"} {
		c.Retention.Schedule = spec
		require.NoError(t, c.Validate(), spec)
	}
}

func TestTrustedProxyPrefixes(t *testing.T) {
	t.Parallel()
	c := Default()
	c.HTTP.TrustedProxies = []string{
		"10.0.0.0/8",
		"10.1.2.3/16",         // masked
		"192.168.1.7",         // single IPv4 → /32
		"2001:db8::1",         // single IPv6 → /128
		"::ffff:172.16.0.1",   // mapped → IPv4 /32
		"::ffff:10.0.0.0/104", // mapped prefix → IPv4 /8
		"2001:db8::/32",
	}
	require.NoError(t, c.Validate())
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("192.168.1.7/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
		netip.MustParsePrefix("172.16.0.1/32"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
	require.Equal(t, want, c.TrustedProxyPrefixes())
	require.True(t, c.TrustedProxyPrefixes()[2].Contains(netip.MustParseAddr("192.168.1.7")))

	require.Empty(t, Default().TrustedProxyPrefixes())
}

// TestLoadIgnoresForeignEnvVariables: AUDITLOG_ variables of no config
// section (a client's own) and Kubernetes' service links for a Service named
// auditlog or auditlog-http do not stop the binary; IgnoredEnv names them.
// A misspelt key, a misspelt section, and a misspelt key that merely ends
// like a service link are errors.
func TestLoadIgnoresForeignEnvVariables(t *testing.T) {
	t.Parallel()
	foreign := []string{
		"AUDITLOG_URL=http://localhost:8080",
		"AUDITLOG_API_KEY=secret",
		"AUDITLOG_SERVICE_HOST=10.0.0.1",
		"AUDITLOG_SERVICE_PORT=8080",
		"AUDITLOG_SERVICE_PORT_HTTP=8080",
		"AUDITLOG_PORT=tcp://10.0.0.1:8080",
		"AUDITLOG_PORT_8080_TCP=tcp://10.0.0.1:8080",
		"AUDITLOG_PORT_8080_TCP_PROTO=tcp",
		"AUDITLOG_PORT_8080_TCP_PORT=8080",
		"AUDITLOG_PORT_8080_TCP_ADDR=10.0.0.1",
		"AUDITLOG_HTTP_PORT=tcp://10.0.0.2:80",
		"AUDITLOG_HTTP_SERVICE_HOST=10.0.0.2",
	}
	environ := append([]string{"AUDITLOG_RELAY_BATCH_SIZE=7", "AUDITLOG_TEST_X=1", "PATH=/bin"}, foreign...)
	cfg, err := Load(writeFile(t, ""), environ)
	require.NoError(t, err)
	require.Equal(t, 7, cfg.Relay.BatchSize, "settings still apply")
	want := make([]string, len(foreign))
	for i, kv := range foreign {
		want[i], _, _ = strings.Cut(kv, "=")
	}
	require.Equal(t, want, IgnoredEnv(environ))

	for kv, wantErr := range map[string]string{
		"AUDITLOG_HTTP_ADRESS=:80":            "AUDITLOG_HTTP_ADRESS",
		"AUDITLOG_DATABASE_EMBEDED_PORT=5":    "AUDITLOG_DATABASE_EMBEDED_PORT",
		"AUDITLOG_HTTP_PORT=8080":             "AUDITLOG_HTTP_PORT",
		"AUDITLOG_DATABSE_URL=postgres://x":   `misspelt for the section "database"`,
		"AUDITLOG_RELAYS_BATCH_SIZE=5":        `misspelt for the section "relay"`,
		"AUDITLOG_INTERGITY_SIGNING_SECRET=x": `misspelt for the section "integrity"`,
	} {
		_, err := Load(writeFile(t, ""), []string{kv, "AUDITLOG_URL=x"})
		require.ErrorContains(t, err, wantErr, kv)
		name, _, _ := strings.Cut(kv, "=")
		require.NotContains(t, IgnoredEnv([]string{kv}), name, "an error is not also ignored")
	}
}
