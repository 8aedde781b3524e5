// Package testdb gives every test its own PostgreSQL database with the whole
// schema applied, in milliseconds, so tests that commit can run in parallel
// without seeing each other's rows.
//
// Usage:
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		pool := testdb.New(t) // fresh migrated database, dropped at cleanup
//		...
//	}
//
// [NewURL] returns the URL of a fresh database instead, for tests that build
// their own pools or run the binary; [AdminURL] is the maintenance database
// of the same server.
//
// # How it works
//
// Once per migration set (keyed by migrations.Hash()) a template database
// auditlog_tpl_<hash> is created from template0 and migrated, then marked
// IS_TEMPLATE with connections disallowed, so nobody can stay connected to it
// and break cloning. Test processes (go test runs packages in parallel
// processes) build it at most once between them: the build runs under a
// PostgreSQL advisory lock on the maintenance database, and a database that
// exists but is not yet marked as a template is a crashed build, dropped and
// rebuilt. Each test then gets `CREATE DATABASE auditlog_test_<unix
// time>_<random> TEMPLATE auditlog_tpl_<hash>`, dropped WITH (FORCE) at
// cleanup after its pool is closed. Test databases older than six hours
// (left by killed test runs) are dropped when a test process first sets up.
// Templates of other migration sets (a few MB each) are dropped at setup
// when no test database was created in the last hour.
//
// # Which server
//
//  1. AUDITLOG_TEST_DATABASE_URL, a postgres:// URL of a maintenance database
//     whose user may create databases, if set.
//  2. Else postgres://postgres@127.0.0.1:5432/postgres, if it answers.
//  3. Else an embedded cluster (app/embeddedpg) in $TMPDIR/auditlog-testpg on
//     127.0.0.1:54330, started by whichever test process gets there first
//     (embeddedpg serialises concurrent starts with a file lock) and reused
//     by the others. It is left running after the tests so later runs start
//     fast; stop it with `pg_ctl stop -D $TMPDIR/auditlog-testpg` (as its
//     owner), or delete the directory after stopping to start afresh.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver for migrations.Up

	"github.com/auditlog/auditlog/app/embeddedpg"
	"github.com/auditlog/auditlog/migrations"
)

const (
	// EnvURL names the environment variable that selects the test server.
	EnvURL = "AUDITLOG_TEST_DATABASE_URL"
	// DefaultURL is tried when EnvURL is unset: a local server with trust
	// authentication, as on developer machines and CI.
	DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	// EmbeddedPort is the port of the embedded fallback cluster; fixed so
	// that every test process finds the same cluster.
	EmbeddedPort = 54330
	// EmbeddedDirName is the embedded fallback cluster's directory under
	// os.TempDir().
	EmbeddedDirName = "auditlog-testpg"
	// MaxConns caps each test pool returned by New. PostgreSQL allows 100
	// connections by default; with two test processes each running several
	// parallel tests, 8 per test leaves room for the harness and for tests
	// that open pools of their own.
	MaxConns = 8
)

const (
	// testDBPrefix and templatePrefix name the databases this package owns;
	// nothing else may use these prefixes.
	testDBPrefix   = "auditlog_test_"
	templatePrefix = "auditlog_tpl_"
	// staleAfter: test databases older than this are leftovers of killed
	// runs. Generous, so that a long soak test is never dropped under itself.
	staleAfter = 6 * time.Hour
	// templateIdleAfter: templates of other migration sets are dropped only
	// when no test database was created for this long (another checkout's
	// test run might still clone from them).
	templateIdleAfter = time.Hour
	// templateLockKey is the advisory lock serialising template builds across
	// test processes ("auditlog" in ASCII).
	templateLockKey int64 = 0x61_75_64_69_74_6c_6f_67
	// setupTimeout bounds the once-per-process setup: maybe starting the
	// embedded cluster, maybe migrating the template.
	setupTimeout = 5 * time.Minute
	// opTimeout bounds creating or dropping one test database.
	opTimeout = time.Minute
)

const (
	sqlAdvisoryLock   = `SELECT pg_advisory_lock($1)`
	sqlAdvisoryUnlock = `SELECT pg_advisory_unlock($1)`
	sqlTemplateState  = `SELECT datistemplate FROM pg_database WHERE datname = $1`
	sqlDatabaseExists = `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`
	sqlListTestDBs    = `SELECT datname FROM pg_database WHERE datname LIKE 'auditlog\_test\_%'`
	// sqlListTemplates lists the templates of migration sets (16 hex digits).
	sqlListTemplates = `SELECT datname FROM pg_database WHERE datname ~ '^auditlog_tpl_[0-9a-f]{16}$'`
	// Formats take identifiers sanitised with pgx.Identifier; CREATE and DROP
	// DATABASE accept no bind parameters.
	fmtCreateEmpty    = `CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8'`
	fmtCreateFrom     = `CREATE DATABASE %s TEMPLATE %s`
	fmtSealTemplate   = `ALTER DATABASE %s WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`
	fmtUnsealTemplate = `ALTER DATABASE %s WITH IS_TEMPLATE false ALLOW_CONNECTIONS true`
	fmtDrop           = `DROP DATABASE IF EXISTS %s WITH (FORCE)`
)

// server is the once-per-process setup result.
type server struct {
	adminURL string
	template string
	err      error
}

var (
	setupOnce sync.Once
	setupRes  server
)

// setup selects the server and makes sure the template exists, once per
// process; every later call returns the same result, error included.
func setup() server {
	setupOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		adminURL, err := selectServer(ctx, os.Getenv(EnvURL), DefaultURL)
		if err != nil {
			setupRes.err = err
			return
		}
		name := templatePrefix + migrations.Hash()
		if _, err := ensureTemplate(ctx, adminURL, name); err != nil {
			setupRes.err = err
			return
		}
		// Best effort: a leftover that cannot be dropped now is retried by
		// the next test process.
		_ = dropStale(ctx, adminURL, time.Now().Add(-staleAfter))
		_ = dropOtherTemplates(ctx, adminURL, name, time.Now().Add(-templateIdleAfter))
		setupRes = server{adminURL: adminURL, template: name}
	})
	return setupRes
}

// AdminURL returns the URL of the test server's maintenance database.
func AdminURL(t testing.TB) string {
	t.Helper()
	s := setup()
	if s.err != nil {
		t.Fatalf("testdb: %v", s.err)
	}
	return s.adminURL
}

// URLFor returns the test server's URL for the database name, which need not
// exist (tests of a missing database use it).
func URLFor(t testing.TB, name string) string {
	t.Helper()
	dbURL, err := withDatabase(AdminURL(t), name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return dbURL
}

// NewURL creates a fresh database with all migrations applied and returns
// its URL. The database is dropped at cleanup, disconnecting whoever is still
// connected.
func NewURL(t testing.TB) string {
	t.Helper()
	s := setup()
	if s.err != nil {
		t.Fatalf("testdb: %v", s.err)
	}
	name, err := newName(time.Now())
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	dbURL, err := withDatabase(s.adminURL, name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := createDatabase(ctx, s, name); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := dropDatabase(ctx, s.adminURL, name); err != nil {
			t.Errorf("testdb: %v", err)
		}
	})
	return dbURL
}

// createDatabase clones the template into a new database name.
func createDatabase(ctx context.Context, s server, name string) error {
	if err := adminExec(ctx, s.adminURL, fmt.Sprintf(fmtCreateFrom, ident(name), ident(s.template))); err != nil {
		return fmt.Errorf("creating database %s from template %s: %w", name, s.template, err)
	}
	return nil
}

// dropDatabase drops database name, disconnecting whoever is connected.
func dropDatabase(ctx context.Context, adminURL, name string) error {
	if err := adminExec(ctx, adminURL, fmt.Sprintf(fmtDrop, ident(name))); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// New creates a fresh database with all migrations applied and returns a
// pool on it (at most MaxConns connections). The pool is closed, then the
// database dropped, at cleanup.
func New(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dbURL := NewURL(t)
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatalf("testdb: parsing database URL: %v", err)
	}
	cfg.MaxConns = MaxConns
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testdb: opening pool: %v", err)
	}
	// Registered after NewURL's drop, so it runs before it.
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("testdb: connecting to test database: %v", err)
	}
	return pool
}

// selectServer picks the server as the package documentation describes
// (envURL is the value of EnvURL, probeURL is DefaultURL outside tests) and
// returns its maintenance database URL.
func selectServer(ctx context.Context, envURL, probeURL string) (string, error) {
	if envURL != "" {
		if _, err := withDatabase(envURL, "postgres"); err != nil {
			return "", fmt.Errorf("%s: %w", EnvURL, err)
		}
		return envURL, nil
	}
	probeErr := ping(ctx, probeURL)
	if probeErr == nil {
		return probeURL, nil
	}
	adminURL, err := startEmbedded(ctx)
	if err != nil {
		return "", fmt.Errorf("no PostgreSQL for tests: %s is unset, %s did not answer (%v), and starting an embedded cluster failed: %w",
			EnvURL, redact(probeURL), probeErr, err)
	}
	return adminURL, nil
}

// startEmbedded starts (or joins) the shared embedded test cluster.
func startEmbedded(ctx context.Context) (string, error) {
	c, err := embeddedpg.Start(ctx, embeddedpg.Config{
		DataDir: filepath.Join(os.TempDir(), EmbeddedDirName),
		Port:    EmbeddedPort,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return "", err
	}
	return c.AdminURL(), nil
}

func ping(ctx context.Context, dbURL string) error {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = 3 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// ensureTemplate makes sure database name exists, is migrated and sealed as a
// template. It reports whether this call built it. Safe to call from many
// processes at once: the check and the build happen under an advisory lock.
func ensureTemplate(ctx context.Context, adminURL, name string) (built bool, err error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return false, fmt.Errorf("connecting to %s: %w", redact(adminURL), err)
	}
	// Closing the session also releases the advisory lock, on every path.
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sqlAdvisoryLock, templateLockKey); err != nil {
		return false, fmt.Errorf("waiting for the template build lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), sqlAdvisoryUnlock, templateLockKey) }()

	var sealed bool
	err = conn.QueryRow(ctx, sqlTemplateState, name).Scan(&sealed)
	switch {
	case err == nil && sealed:
		return false, nil
	case err == nil:
		// Exists but never sealed: a build that died half-way.
		if _, err := conn.Exec(ctx, fmt.Sprintf(fmtDrop, ident(name))); err != nil {
			return false, fmt.Errorf("dropping unfinished template %s: %w", name, err)
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return false, fmt.Errorf("looking up template %s: %w", name, err)
	}

	if _, err := conn.Exec(ctx, fmt.Sprintf(fmtCreateEmpty, ident(name))); err != nil {
		return false, fmt.Errorf("creating template %s: %w", name, err)
	}
	if err := migrate(ctx, adminURL, name); err != nil {
		return false, err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf(fmtSealTemplate, ident(name))); err != nil {
		return false, fmt.Errorf("marking %s as a template: %w", name, err)
	}
	return true, nil
}

// migrate applies all migrations to database name; its connections are
// closed on return so the template can be cloned.
func migrate(ctx context.Context, adminURL, name string) error {
	dbURL, err := withDatabase(adminURL, name)
	if err != nil {
		return err
	}
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		return fmt.Errorf("opening template %s: %w", name, err)
	}
	defer db.Close()
	if _, err := migrations.Up(ctx, db); err != nil {
		return fmt.Errorf("migrating template %s: %w", name, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("closing template %s: %w", name, err)
	}
	return nil
}

// dropTemplate unseals and drops a template.
func dropTemplate(ctx context.Context, adminURL, name string) error {
	if err := adminExec(ctx, adminURL, fmt.Sprintf(fmtUnsealTemplate, ident(name))); err != nil {
		return fmt.Errorf("unsealing template %s: %w", name, err)
	}
	if err := adminExec(ctx, adminURL, fmt.Sprintf(fmtDrop, ident(name))); err != nil {
		return fmt.Errorf("dropping template %s: %w", name, err)
	}
	return nil
}

// dropStale drops test databases created before cutoff (the creation time is
// part of the name), left behind by test processes that were killed before
// their cleanups ran.
func dropStale(ctx context.Context, adminURL string, cutoff time.Time) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redact(adminURL), err)
	}
	defer conn.Close(context.Background())
	names, err := queryStrings(ctx, conn, sqlListTestDBs)
	if err != nil {
		return fmt.Errorf("listing test databases: %w", err)
	}
	var errs []error
	for _, name := range names {
		created, ok := createdAt(name)
		if !ok || !created.Before(cutoff) {
			continue
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf(fmtDrop, ident(name))); err != nil {
			errs = append(errs, fmt.Errorf("dropping stale test database %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// dropOtherTemplates drops the templates of migration sets other than keep,
// which migration changes leave behind (a few MB each), unless a test
// database was created after busySince: some test run may still be cloning
// from them. It holds the template build lock meanwhile.
func dropOtherTemplates(ctx context.Context, adminURL, keep string, busySince time.Time) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redact(adminURL), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sqlAdvisoryLock, templateLockKey); err != nil {
		return fmt.Errorf("waiting for the template build lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), sqlAdvisoryUnlock, templateLockKey) }()
	tests, err := queryStrings(ctx, conn, sqlListTestDBs)
	if err != nil {
		return fmt.Errorf("listing test databases: %w", err)
	}
	for _, name := range tests {
		if created, ok := createdAt(name); ok && created.After(busySince) {
			return nil // a test run is active
		}
	}
	templates, err := queryStrings(ctx, conn, sqlListTemplates)
	if err != nil {
		return fmt.Errorf("listing templates: %w", err)
	}
	var errs []error
	for _, name := range templates {
		if name == keep {
			continue
		}
		if err := dropTemplate(ctx, adminURL, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func queryStrings(ctx context.Context, conn *pgx.Conn, query string) ([]string, error) {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// newName returns auditlog_test_<unix seconds>_<12 random hex digits>: unique,
// well under the 63-byte identifier limit, and datable by dropStale.
func newName(now time.Time) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating database name: %w", err)
	}
	return testDBPrefix + strconv.FormatInt(now.Unix(), 10) + "_" + hex.EncodeToString(b[:]), nil
}

// createdAt parses the creation time out of a name made by newName.
func createdAt(name string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, testDBPrefix)
	if !ok {
		return time.Time{}, false
	}
	secs, _, ok := strings.Cut(rest, "_")
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// adminExec runs one statement on its own connection to the maintenance
// database. A connection per call, rather than a shared pool, leaves no
// background goroutines behind for leak checkers in TestMain.
func adminExec(ctx context.Context, adminURL, stmt string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redact(adminURL), err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, stmt)
	return err
}

// withDatabase returns adminURL pointing at database name instead.
func withDatabase(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s is not a postgres:// URL", redact(adminURL))
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// redact hides a password in a URL for error messages; anything that is not
// a postgres:// URL is not shown at all, as it may hold a password too.
func redact(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "(connection string not shown)"
	}
	return u.Redacted()
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
