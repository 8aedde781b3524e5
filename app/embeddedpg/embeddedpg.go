// Package embeddedpg runs a local PostgreSQL cluster of the application's own,
// from the PostgreSQL server binaries installed on the machine. It is what
// `auditlog serve` uses when database.url is empty, and what the test harness
// (internal/testdb) falls back to when no server is reachable.
//
// Usage:
//
//	c, err := embeddedpg.Start(ctx, embeddedpg.Config{Logger: logger})
//	if err != nil { ... }          // names what to install when no binaries exist
//	defer c.Stop(context.Background())
//	pool, err := pgxpool.New(ctx, c.URL()) // database "auditlog", created if missing
//
// Behaviour:
//
//   - Binaries are found by [FindBinaries]: PATH, then `pg_config --bindir`,
//     then the newest of /usr/lib/postgresql/*/bin and other usual places.
//   - The data directory is initialised once (initdb: UTF8, C locale,
//     superuser "postgres", trust authentication from this machine only) and
//     reused on later runs.
//   - The server listens on 127.0.0.1 only, at Config.Port; its unix socket is
//     in the data directory when the path fits the socket path limit, else
//     there is no unix socket. The port, listen address and socket directory
//     live in auditlog.conf in the data directory, rewritten at every start.
//   - Server output goes to server.log in the data directory; errors quote its
//     tail.
//   - A cluster already running in the data directory (started by another
//     process, or left by a crashed one) is reused, not started twice. A
//     stale postmaster.pid from a dead server is handled by PostgreSQL itself.
//     Concurrent Start calls on one data directory, from any process, are
//     serialised by a file lock beside it (<data dir>.lock).
//   - Run as root, the programs run as an unprivileged user instead (the data
//     directory's owner, else "postgres", else "nobody"), because PostgreSQL
//     refuses to run as root. The data directory is given to that user, and
//     parent directories it cannot pass through get the search permission
//     (o+x) added, nothing more.
//   - The server keeps running if this process dies without calling Stop; the
//     next Start reuses it.
package embeddedpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// DefaultDataDir is where the cluster lives when Config.DataDir is empty,
	// relative to the working directory.
	DefaultDataDir = ".auditlog/postgres"
	// DefaultPort is the TCP port used when Config.Port is zero; chosen away
	// from 5432 so a system PostgreSQL is not disturbed.
	DefaultPort = 54329
	// DatabaseName is the application database that URL points at.
	DatabaseName = "auditlog"
	// Superuser is the role initdb creates; every URL connects as it.
	Superuser = "postgres"
)

const (
	// startTimeout bounds how long pg_ctl waits for the server to start or
	// stop (crash recovery of a big WAL can be slow) and how long the first
	// connection is retried.
	startTimeout = 60 * time.Second
	// maxSocketPath is the longest unix socket path that works everywhere:
	// sun_path is 108 bytes on Linux and 104 on macOS, NUL included.
	maxSocketPath = 103
	// maxLogBytes: a server.log bigger than this is moved to server.log.1 at
	// start, so the log does not grow forever across runs.
	maxLogBytes = 16 << 20
	// logFileName, confFileName: files this package keeps in the data dir.
	logFileName  = "server.log"
	confFileName = "auditlog.conf"
	// includeLine makes postgresql.conf read auditlog.conf last, so our
	// settings win over the defaults initdb wrote.
	includeLine = "include_if_exists = '" + confFileName + "'"
)

const (
	sqlDatabaseExists = `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`
	sqlCreateDatabase = `CREATE DATABASE auditlog`
)

// hbaConf replaces initdb's pg_hba.conf: trust, and only from this machine
// (the unix socket and 127.0.0.1; the server listens nowhere else).
const hbaConf = `# Written by auditlog's embedded PostgreSQL (app/embeddedpg).
# Trust authentication, and only from this machine.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
`

// Config says where and how to run the cluster.
type Config struct {
	// DataDir is the cluster's data directory, created and initialised on
	// first use and kept between runs. Default DefaultDataDir
	// (".auditlog/postgres"), relative to the working directory.
	DataDir string
	// Port is the TCP port on 127.0.0.1 the server listens on. Default
	// DefaultPort (54329).
	Port int
	// Logger receives start/stop messages. Default slog.Default().
	Logger *slog.Logger

	// search overrides where binaries are looked for; tests only.
	search binarySearch
}

func (c Config) withDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("embeddedpg: Config.Port %d is not a TCP port (1-65535)", c.Port)
	}
	// pg_ctl hands the data directory to /bin/sh inside double quotes, so
	// these characters would be interpreted by the shell.
	if strings.ContainsAny(c.DataDir, "\"$`\\\n") {
		return fmt.Errorf("embeddedpg: Config.DataDir %q must not contain \", $, `, \\ or a newline", c.DataDir)
	}
	return nil
}

// Cluster is a running local PostgreSQL server.
type Cluster struct {
	adopted bool // the server was already running when Start was called
	dataDir string
	port    int
	binDir  string
	user    *serverUser
	logger  *slog.Logger
}

// URL is the connection URL of the application database ("auditlog").
func (c *Cluster) URL() string { return c.urlFor(DatabaseName) }

// AdminURL is the connection URL of the maintenance database ("postgres"),
// for creating and dropping databases.
func (c *Cluster) AdminURL() string { return c.urlFor("postgres") }

// DataDir is the absolute path of the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// Port is the TCP port the server listens on. It differs from Config.Port
// when an already-running cluster was started on another port.
func (c *Cluster) Port() int { return c.port }

func (c *Cluster) urlFor(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, c.port, db)
}

// Start makes sure the cluster in cfg.DataDir is initialised, running and
// accepting connections, and that database "auditlog" exists. It reuses a
// server already running in that directory.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embeddedpg: resolving Config.DataDir %q: %w", cfg.DataDir, err)
	}
	binDir, err := cfg.search.find()
	if err != nil {
		return nil, fmt.Errorf("embeddedpg: %w", err)
	}
	u, err := chooseServerUser(dataDir)
	if err != nil {
		return nil, fmt.Errorf("embeddedpg: %w", err)
	}
	c := &Cluster{dataDir: dataDir, port: cfg.Port, binDir: binDir, user: u, logger: cfg.Logger}

	if err := os.MkdirAll(filepath.Dir(dataDir), 0o755); err != nil {
		return nil, fmt.Errorf("embeddedpg: creating parent of data directory %s: %w", dataDir, err)
	}
	unlock, err := lockFile(ctx, dataDir+".lock")
	if err != nil {
		return nil, fmt.Errorf("embeddedpg: %w", err)
	}
	defer unlock()

	if err := c.start(ctx); err != nil {
		return nil, fmt.Errorf("embeddedpg: %w", err)
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	initialised, err := prepareDataDir(c.dataDir, c.user, c.logger)
	if err != nil {
		return err
	}
	if !initialised {
		if err := c.initdb(ctx); err != nil {
			return err
		}
	}
	if err := c.ensureInclude(); err != nil {
		return err
	}
	running, err := c.running(ctx)
	if err != nil {
		return err
	}
	if running {
		if err := c.adoptRunning(); err != nil {
			return err
		}
		c.adopted = true
	} else if err := c.startServer(ctx); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	return c.ensureDatabase(ctx)
}

// initdb creates the cluster in the empty data directory and restricts
// pg_hba.conf to this machine.
func (c *Cluster) initdb(ctx context.Context) error {
	c.logger.Info("embeddedpg: initialising data directory",
		slog.String("data_dir", c.dataDir), slog.String("bin_dir", c.binDir), slog.String("server_user", c.user.String()))
	// initdb's "next steps" text goes to the captured output, so
	// --no-instructions (PostgreSQL 14+) is not needed.
	out, err := c.run(ctx, "initdb", "-D", c.dataDir, "-U", Superuser, "-E", "UTF8", "--no-locale", "--auth=trust")
	if err != nil {
		return fmt.Errorf("initialising data directory %s with initdb: %w\n%s", c.dataDir, err, tail(out, 20))
	}
	hba := filepath.Join(c.dataDir, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte(hbaConf), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", hba, err)
	}
	return nil
}

// ensureInclude appends the include of auditlog.conf to postgresql.conf once.
func (c *Cluster) ensureInclude() error {
	path := filepath.Join(c.dataDir, "postgresql.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if bytes.Contains(b, []byte(includeLine)) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	_, err = fmt.Fprintf(f, "\n# Port, listen address and socket directory, managed by auditlog.\n%s\n", includeLine)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("appending to %s: %w", path, err)
	}
	return nil
}

// writeConf writes the settings that may change between runs.
func (c *Cluster) writeConf() error {
	socketDir := c.dataDir
	if len(filepath.Join(socketDir, ".s.PGSQL."+strconv.Itoa(c.port))) > maxSocketPath {
		socketDir = "" // too long for a unix socket; TCP only.
	}
	conf := fmt.Sprintf(`# Written by auditlog (app/embeddedpg) at every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
`, c.port, strings.ReplaceAll(socketDir, "'", "''"))
	path := filepath.Join(c.dataDir, confFileName)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return chownFile(path, c.user)
}

// running asks pg_ctl whether a live server owns the data directory.
func (c *Cluster) running(ctx context.Context) (bool, error) {
	out, err := c.run(ctx, "pg_ctl", "status", "-D", c.dataDir)
	if err == nil {
		return true, nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() == 3 { // 3: not running
		return false, nil
	}
	return false, fmt.Errorf("checking server status in %s: %w\n%s", c.dataDir, err, tail(out, 20))
}

// adoptRunning takes over a server some other process started, on whatever
// port it listens.
func (c *Cluster) adoptRunning() error {
	pidFile := filepath.Join(c.dataDir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("reading %s of the running server: %w", pidFile, err)
	}
	// Line 4 of postmaster.pid is the port.
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return fmt.Errorf("reading %s of the running server: too short", pidFile)
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return fmt.Errorf("reading port from %s: %w", pidFile, err)
	}
	if port != c.port {
		c.logger.Warn("embeddedpg: reusing running server on a different port than configured",
			slog.String("data_dir", c.dataDir), slog.Int("port", port), slog.Int("configured_port", c.port))
		c.port = port
	}
	c.logger.Info("embeddedpg: reusing running server",
		slog.String("data_dir", c.dataDir), slog.Int("port", c.port), slog.String("pid", strings.TrimSpace(lines[0])))
	return nil
}

func (c *Cluster) startServer(ctx context.Context) error {
	if err := c.writeConf(); err != nil {
		return err
	}
	logPath := filepath.Join(c.dataDir, logFileName)
	if fi, err := os.Stat(logPath); err == nil && fi.Size() > maxLogBytes {
		if err := os.Rename(logPath, logPath+".1"); err != nil {
			return fmt.Errorf("rotating %s: %w", logPath, err)
		}
	}
	c.logger.Info("embeddedpg: starting server",
		slog.String("data_dir", c.dataDir), slog.Int("port", c.port), slog.String("bin_dir", c.binDir),
		slog.String("server_user", c.user.String()))
	out, err := c.run(ctx, "pg_ctl", "start", "-D", c.dataDir, "-l", logPath,
		"-w", "-t", strconv.Itoa(int(startTimeout/time.Second)))
	if err != nil {
		return fmt.Errorf("starting server in %s on 127.0.0.1:%d: %w\n%s\nserver log (%s):\n%s",
			c.dataDir, c.port, err, tail(out, 10), logPath, c.logTail())
	}
	return nil
}

// waitReady connects until the server answers; pg_ctl -w has normally made
// sure already, but an adopted server may still be in recovery.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var lastErr error
	for {
		conn, err := pgx.Connect(ctx, c.AdminURL())
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(context.Background())
			if err == nil {
				return nil
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for server in %s to accept connections on 127.0.0.1:%d: %w\nserver log:\n%s",
				c.dataDir, c.port, lastErr, c.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ensureDatabase creates database "auditlog" if missing; a concurrent
// creator winning the race is fine.
func (c *Cluster) ensureDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.AdminURL())
	if err != nil {
		return fmt.Errorf("connecting to create database %s: %w", DatabaseName, err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, sqlDatabaseExists, DatabaseName).Scan(&exists); err != nil {
		return fmt.Errorf("checking for database %s: %w", DatabaseName, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, sqlCreateDatabase); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
			return nil
		}
		return fmt.Errorf("creating database %s: %w", DatabaseName, err)
	}
	c.logger.Info("embeddedpg: created database", slog.String("database", DatabaseName))
	return nil
}

// Adopted reports whether Start found the server already running (started
// by another process, or left by a crashed one) instead of starting it.
// A short-lived command that adopted a server must not stop it: a running
// `auditlog serve` may be using it.
func (c *Cluster) Adopted() bool { return c.adopted }

// Stop shuts the server down in fast mode (open transactions are rolled
// back, clients disconnected) and waits for it to exit. It stops the server
// even if another process started it. Stopping a stopped cluster is a no-op.
func (c *Cluster) Stop(ctx context.Context) error {
	running, err := c.running(ctx)
	if err != nil {
		return fmt.Errorf("embeddedpg: %w", err)
	}
	if !running {
		return nil
	}
	c.logger.Info("embeddedpg: stopping server", slog.String("data_dir", c.dataDir), slog.Int("port", c.port))
	out, err := c.run(ctx, "pg_ctl", "stop", "-D", c.dataDir, "-m", "fast", "-w",
		"-t", strconv.Itoa(int(startTimeout/time.Second)))
	if err != nil {
		return fmt.Errorf("embeddedpg: stopping server in %s: %w\n%s\nserver log:\n%s",
			c.dataDir, err, tail(out, 10), c.logTail())
	}
	return nil
}

// run executes one of the PostgreSQL programs as the server user, with PG*
// variables removed from the environment so PGDATA, PGPORT and friends cannot
// redirect it, and returns its combined output.
func (c *Cluster) run(ctx context.Context, program string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, program), args...)
	cmd.Dir = "/" // the working directory may be unreadable to the server user
	cmd.SysProcAttr = c.user.sysProcAttr()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The server pg_ctl starts must not hold our output pipe open; it is
	// redirected to server.log, but do not wait forever if it is not.
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

// logTail returns the last lines of server.log, for error messages.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(filepath.Join(c.dataDir, logFileName))
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	return tail(b, 20)
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockFile takes an exclusive flock on path, polling until ctx ends; the
// returned func releases it. The lock dies with the process, so a crash
// never leaves it held.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for lock %s (another process is starting this cluster): %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
