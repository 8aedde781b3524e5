// Package config loads auditlog's settings: built-in defaults, then
// config.yaml, then AUDITLOG_<SECTION>_<KEY> environment variables, then
// validation. Every error names the offending key in its YAML dotted form
// (relay.batch_size) or the environment variable it came from.
package config

import (
	"time"
)

// Defaults for every setting. config.yaml at the repository root lists the
// same values; a test keeps the two in step.
const (
	// DatabaseURLDefault is empty: start an embedded PostgreSQL cluster.
	DatabaseURLDefault = ""
	// DatabaseDataDirDefault is where the embedded cluster keeps its data.
	DatabaseDataDirDefault = ".auditlog/postgres"
	// DatabaseEmbeddedPortDefault is the embedded cluster's TCP port.
	DatabaseEmbeddedPortDefault = 54329
	// DatabaseMaxConnsDefault is the connection pool's size.
	DatabaseMaxConnsDefault = 16

	// HTTPAddrDefault is the HTTP API's listen address.
	HTTPAddrDefault = ":8080"
	// HTTPShutdownGraceDefault is how long a stopping server waits for
	// in-flight requests (exports included) before cutting them.
	HTTPShutdownGraceDefault = 30 * time.Second

	// RelayBatchSizeDefault is how many outbox rows one relay move claims.
	RelayBatchSizeDefault = 1000
	// RelayPollIntervalDefault is how long the relay waits when the outbox is empty.
	RelayPollIntervalDefault = 200 * time.Millisecond

	// RetentionDaysDefault is how many days of events are kept.
	RetentionDaysDefault = 365
	// RetentionPartitionIntervalDefault is the span of one audit_events partition.
	RetentionPartitionIntervalDefault = PartitionIntervalMonth
	// RetentionPremakeDefault is how many future partitions are kept ready.
	RetentionPremakeDefault = 3
	// RetentionScheduleDefault is the cron spec of partition ensure + prune.
	RetentionScheduleDefault = "@every 1h"

	// IngestMaxBatchDefault is the most events one POST /v1/events may carry.
	IngestMaxBatchDefault = 1000
	// IngestMaxBodyBytesDefault is the largest request body ingest reads (5 MiB).
	IngestMaxBodyBytesDefault = 5 << 20

	// EventsMaxDetailsBytesDefault is the largest canonical details object (32 KiB).
	EventsMaxDetailsBytesDefault = 32 << 10

	// ExportCSVFormulaGuardDefault turns the CSV formula-injection guard on.
	ExportCSVFormulaGuardDefault = true

	// LogLevelDefault is the least severe level logged.
	LogLevelDefault = "info"
	// LogFormatDefault is the log line format.
	LogFormatDefault = "json"
)

// Values of retention.partition_interval.
const (
	PartitionIntervalDay   = "day"
	PartitionIntervalMonth = "month"
)

// EventsNullIPSourcesDefault returns the default events.null_ip_sources: the
// sources whose requests are relayed, so their socket address is not the
// actor's. A function, not a variable, so nobody can change the default.
func EventsNullIPSourcesDefault() []string {
	return []string{"slack", "workflow", "system"}
}

// DefaultFile is the config file read when Load is given no path and the
// file exists in the working directory.
const DefaultFile = "config.yaml"

// EnvPrefix starts every environment variable that overrides a setting:
// AUDITLOG_<SECTION>_<KEY>, for example AUDITLOG_RELAY_POLL_INTERVAL.
const EnvPrefix = "AUDITLOG_"

// EnvTestPrefix starts variables reserved for test tooling (such as
// internal/testdb's AUDITLOG_TEST_DATABASE_URL); Load ignores them rather
// than refusing them as unknown settings. No config section is named "test".
const EnvTestPrefix = "AUDITLOG_TEST_"

// Config is every setting of auditlog, one field per key of config.yaml.
type Config struct {
	Database  Database  `yaml:"database"`
	HTTP      HTTP      `yaml:"http"`
	Relay     Relay     `yaml:"relay"`
	Retention Retention `yaml:"retention"`
	Ingest    Ingest    `yaml:"ingest"`
	Events    Events    `yaml:"events"`
	Export    Export    `yaml:"export"`
	Log       Log       `yaml:"log"`
	Slack     Slack     `yaml:"slack"`
	Integrity Integrity `yaml:"integrity"`
}

// Database is the database section.
type Database struct {
	// URL is the PostgreSQL connection string (URL or key=value form).
	// Empty starts an embedded cluster in DataDir on EmbeddedPort.
	// Default: "" (embedded).
	URL string `yaml:"url"`
	// DataDir is the embedded cluster's data directory, kept between runs.
	// Only used when URL is empty. Default: ".auditlog/postgres".
	DataDir string `yaml:"data_dir"`
	// EmbeddedPort is the TCP port of the embedded cluster (1–65535).
	// Default: 54329.
	EmbeddedPort int `yaml:"embedded_port"`
	// MaxConns is the size of the connection pool (1–1000). Default: 16.
	MaxConns int `yaml:"max_conns"`
}

// HTTP is the http section.
type HTTP struct {
	// Addr is the HTTP API's listen address, host:port (host may be empty).
	// Default: ":8080".
	Addr string `yaml:"addr"`
	// TrustedProxies are the CIDRs (or single addresses, taken as /32 or
	// /128) whose X-Forwarded-For is believed; the client address is the
	// right-most entry not in them. Empty: use the socket address.
	// Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ShutdownGrace is how long SIGTERM/SIGINT waits for in-flight requests
	// (streaming exports included) to finish before cutting them (0s–1h; 0
	// cuts at once). The relay's last batch and the partition cron get up
	// to 10s each after that. Default: 30s.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
}

// Relay is the relay section.
type Relay struct {
	// BatchSize is how many outbox rows one relay move claims (1–10000).
	// Default: 1000.
	BatchSize int `yaml:"batch_size"`
	// PollInterval is how long the relay waits before looking again when
	// the outbox was empty (1ms–1h). Default: 200ms.
	PollInterval time.Duration `yaml:"poll_interval"`
}

// Retention is the retention section.
type Retention struct {
	// Days is how many days of events are kept (1–36500). Older partitions
	// are dropped whole; an event older than this is refused. Default: 365.
	Days int `yaml:"days"`
	// PartitionInterval is the span of one audit_events partition, "day" or
	// "month". Default: "month".
	PartitionInterval string `yaml:"partition_interval"`
	// Premake is how many partitions after the current one are kept ready
	// (0–1000). Default: 3.
	Premake int `yaml:"premake"`
	// Schedule is the cron spec of partition ensure + prune: five fields
	// (minute hour day-of-month month day-of-week, in UTC) or a descriptor
	// such as "@hourly" or "@every 1h". Default: "@every 1h".
	Schedule string `yaml:"schedule"`
}

// Ingest is the ingest section.
type Ingest struct {
	// MaxBatch is the most events one POST /v1/events may carry (1–100000).
	// Default: 1000.
	MaxBatch int `yaml:"max_batch"`
	// MaxBodyBytes is the largest request body ingest reads; a larger one is
	// refused with 413 (1024 to 1 GiB). Default: 5242880 (5 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// Events is the events section.
type Events struct {
	// NullIPSources are the event sources whose ip is always stored as null,
	// because a relayed request's address is not the actor's. Each is a
	// source name (1–32 of a-z 0-9 _). Default: [slack, workflow, system].
	NullIPSources []string `yaml:"null_ip_sources"`
	// MaxDetailsBytes is the largest details object, measured once
	// canonicalised (2 bytes to 16 MiB). Default: 32768 (32 KiB).
	MaxDetailsBytes int `yaml:"max_details_bytes"`
}

// Export is the export section.
type Export struct {
	// CSVFormulaGuard prefixes a CSV text cell starting with = + - @, tab or
	// carriage return with ' so spreadsheets do not run it. Default: true.
	CSVFormulaGuard bool `yaml:"csv_formula_guard"`
}

// Log is the log section (not part of the v1 contract's list, but follows
// its rules: config.yaml key and AUDITLOG_LOG_* variables).
type Log struct {
	// Level is the least severe level logged: debug, info, warn or error.
	// Default: "info".
	Level string `yaml:"level"`
	// Format is the log line format: "json" or "text". Default: "json".
	Format string `yaml:"format"`
}

// Slack is the slack section, for the in-app Slack interactions endpoint
// (not part of the v1 contract's list; follows its rules).
type Slack struct {
	// SigningSecret verifies X-Slack-Signature on POST /slack/interactions.
	// Empty disables the endpoint (it answers 404). Default: "".
	// Prefer AUDITLOG_SLACK_SIGNING_SECRET over writing it in the file.
	SigningSecret string `yaml:"signing_secret"`
}

// Integrity is the integrity section: signed checkpoints of the per-workspace
// hash chains (README "Integrity"). The chain itself is always computed.
type Integrity struct {
	// SigningKeyFile is the Ed25519 private key (PKCS #8 PEM, made by
	// `auditlog integrity keygen`) that signs checkpoints. Empty: no
	// checkpoints are made on the schedule, and the ones retention makes
	// are unsigned, which verification with a public key does not trust.
	// A path that cannot be read is an error at start. Default: "".
	SigningKeyFile string `yaml:"signing_key_file"`
	// CheckpointSchedule is the cron spec (UTC; as retention.schedule) on
	// which every workspace whose chain grew gets a signed checkpoint.
	// Default: "@every 1h".
	CheckpointSchedule string `yaml:"checkpoint_schedule"`
}

// IntegrityCheckpointScheduleDefault is the default of
// integrity.checkpoint_schedule.
const IntegrityCheckpointScheduleDefault = "@every 1h"

// Default returns the built-in defaults; they pass Validate.
func Default() Config {
	return Config{
		Database: Database{
			URL:          DatabaseURLDefault,
			DataDir:      DatabaseDataDirDefault,
			EmbeddedPort: DatabaseEmbeddedPortDefault,
			MaxConns:     DatabaseMaxConnsDefault,
		},
		HTTP: HTTP{
			Addr:           HTTPAddrDefault,
			TrustedProxies: []string{},
			ShutdownGrace:  HTTPShutdownGraceDefault,
		},
		Relay: Relay{
			BatchSize:    RelayBatchSizeDefault,
			PollInterval: RelayPollIntervalDefault,
		},
		Retention: Retention{
			Days:              RetentionDaysDefault,
			PartitionInterval: RetentionPartitionIntervalDefault,
			Premake:           RetentionPremakeDefault,
			Schedule:          RetentionScheduleDefault,
		},
		Ingest: Ingest{
			MaxBatch:     IngestMaxBatchDefault,
			MaxBodyBytes: IngestMaxBodyBytesDefault,
		},
		Events: Events{
			NullIPSources:   EventsNullIPSourcesDefault(),
			MaxDetailsBytes: EventsMaxDetailsBytesDefault,
		},
		Export: Export{
			CSVFormulaGuard: ExportCSVFormulaGuardDefault,
		},
		Log: Log{
			Level:  LogLevelDefault,
			Format: LogFormatDefault,
		},
		Integrity: Integrity{
			CheckpointSchedule: IntegrityCheckpointScheduleDefault,
		},
	}
}
