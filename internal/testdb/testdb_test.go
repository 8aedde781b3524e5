package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/migrations"
)

// databaseExists asks the server whether database name exists.
func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, AdminURL(t))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, sqlDatabaseExists, name).Scan(&exists))
	return exists
}

func TestNewGivesDistinctMigratedDatabasesDroppedAtCleanup(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var names []string

	// The group returns once both parallel subtests and their cleanups ran.
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				pool := New(t)
				require.EqualValues(t, MaxConns, pool.Config().MaxConns)

				var name string
				require.NoError(t, pool.QueryRow(ctx, `SELECT current_database()`).Scan(&name))
				require.True(t, strings.HasPrefix(name, testDBPrefix), name)
				var outbox *string
				require.NoError(t, pool.QueryRow(ctx, `SELECT to_regclass('audit_outbox')::text`).Scan(&outbox))
				require.NotNil(t, outbox, "audit_outbox missing: database not migrated")

				// Writes stay in this test's database.
				_, err := pool.Exec(ctx, `CREATE TABLE mine (owner text)`)
				require.NoError(t, err)
				_, err = pool.Exec(ctx, `INSERT INTO mine VALUES ($1)`, name)
				require.NoError(t, err)
				var n int
				require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM mine`).Scan(&n))
				require.Equal(t, 1, n)

				mu.Lock()
				names = append(names, name)
				mu.Unlock()
			})
		}
	})

	require.Len(t, names, 2)
	require.NotEqual(t, names[0], names[1])
	for _, name := range names {
		require.False(t, databaseExists(t, name), "database %s not dropped at cleanup", name)
	}
}

func TestNewURLHasNoPendingMigrationsAndIsDropped(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("use", func(t *testing.T) {
		dbURL := NewURL(t)
		db, err := sql.Open("pgx", dbURL)
		require.NoError(t, err)
		defer db.Close()
		pending, err := migrations.Pending(context.Background(), db)
		require.NoError(t, err)
		require.False(t, pending)
		require.NoError(t, db.QueryRow(`SELECT current_database()`).Scan(&name))
		// Left connected on purpose: the drop at cleanup must still work.
		_, err = db.Exec(`SELECT 1`)
		require.NoError(t, err)
	})
	require.NotEmpty(t, name)
	require.False(t, databaseExists(t, name))
}

func TestTemplateIsSealed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, AdminURL(t))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var isTemplate, allowConn bool
	require.NoError(t, conn.QueryRow(ctx,
		`SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1`,
		templatePrefix+migrations.Hash()).Scan(&isTemplate, &allowConn))
	require.True(t, isTemplate)
	require.False(t, allowConn, "connections to the template must be refused so cloning never fails")
}

func TestEnsureTemplateBuildsOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	adminURL := AdminURL(t)
	suffix, err := newName(time.Now())
	require.NoError(t, err)
	name := templatePrefix + "race_" + strings.TrimPrefix(suffix, testDBPrefix)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, dropTemplate(ctx, adminURL, name))
	})

	// Goroutines with their own sessions stand in for test processes.
	const builders = 4
	var wg sync.WaitGroup
	built := make(chan bool, builders)
	errs := make(chan error, builders)
	for range builders {
		wg.Go(func() {
			b, err := ensureTemplate(context.Background(), adminURL, name)
			built <- b
			errs <- err
		})
	}
	wg.Wait()
	close(built)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var n int
	for b := range built {
		if b {
			n++
		}
	}
	require.Equal(t, 1, n, "template built more than once")
}

func TestEnsureTemplateRebuildsUnfinishedTemplate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	adminURL := AdminURL(t)
	suffix, err := newName(time.Now())
	require.NoError(t, err)
	name := templatePrefix + "crash_" + strings.TrimPrefix(suffix, testDBPrefix)
	t.Cleanup(func() { require.NoError(t, dropTemplate(context.Background(), adminURL, name)) })

	// A build that died after CREATE DATABASE: empty and not sealed.
	require.NoError(t, adminExec(ctx, adminURL, fmt.Sprintf(fmtCreateEmpty, ident(name))))
	built, err := ensureTemplate(ctx, adminURL, name)
	require.NoError(t, err)
	require.True(t, built)

	// And the result is a complete, clonable template.
	clone, err := newName(time.Now())
	require.NoError(t, err)
	require.NoError(t, adminExec(ctx, adminURL, fmt.Sprintf(fmtCreateFrom, ident(clone), ident(name))))
	t.Cleanup(func() {
		require.NoError(t, adminExec(context.Background(), adminURL, fmt.Sprintf(fmtDrop, ident(clone))))
	})
	cloneURL, err := withDatabase(adminURL, clone)
	require.NoError(t, err)
	db, err := sql.Open("pgx", cloneURL)
	require.NoError(t, err)
	defer db.Close()
	pending, err := migrations.Pending(ctx, db)
	require.NoError(t, err)
	require.False(t, pending)
}

func TestDropStaleDropsOnlyOldTestDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	adminURL := AdminURL(t)
	old, err := newName(time.Now().Add(-staleAfter - time.Hour))
	require.NoError(t, err)
	require.NoError(t, adminExec(ctx, adminURL, fmt.Sprintf(fmtCreateFrom, ident(old), ident(templatePrefix+migrations.Hash()))))
	t.Cleanup(func() { _ = adminExec(context.Background(), adminURL, fmt.Sprintf(fmtDrop, ident(old))) })

	var recent string
	require.NoError(t, New(t).QueryRow(ctx, `SELECT current_database()`).Scan(&recent))

	require.NoError(t, dropStale(ctx, adminURL, time.Now().Add(-staleAfter)))
	require.False(t, databaseExists(t, old))
	require.True(t, databaseExists(t, recent))
}

func TestNamesAreDatable(t *testing.T) {
	t.Parallel()
	now := time.Unix(1764100000, 0)
	name, err := newName(now)
	require.NoError(t, err)
	require.LessOrEqual(t, len(name), 63)
	got, ok := createdAt(name)
	require.True(t, ok)
	require.True(t, got.Equal(now))
	for _, bad := range []string{"auditlog_test_x_1", "auditlog_test_", "other_1_2", "auditlog_test_123"} {
		_, ok := createdAt(bad)
		require.False(t, ok, bad)
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	got, err := withDatabase("postgres://u:secret@h:5/postgres?sslmode=disable", "auditlog_test_1_ab")
	require.NoError(t, err)
	require.Equal(t, "postgres://u:secret@h:5/auditlog_test_1_ab?sslmode=disable", got)
	_, err = withDatabase("host=h dbname=postgres password=secret", "x")
	require.ErrorContains(t, err, "not a postgres:// URL")
	require.NotContains(t, err.Error(), "secret")
}

func TestSelectServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	got, err := selectServer(ctx, "postgres://u@db.example:5432/postgres", DefaultURL)
	require.NoError(t, err)
	require.Equal(t, "postgres://u@db.example:5432/postgres", got, "the environment variable wins without probing")
	_, err = selectServer(ctx, "host=db.example", DefaultURL)
	require.ErrorContains(t, err, EnvURL)

	if testing.Short() {
		t.Skip("the fallback starts the embedded test cluster")
	}
	// Nothing listens on port 1: fall back to the embedded cluster, which is
	// left running for later test runs.
	got, err = selectServer(ctx, "", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable")
	require.NoError(t, err)
	require.Contains(t, got, fmt.Sprintf("127.0.0.1:%d/postgres", EmbeddedPort))
	require.NoError(t, ping(ctx, got))
}

// BenchmarkCreateDrop measures cloning a database from the template and
// dropping it: the per-test cost of the harness.
func BenchmarkCreateDrop(b *testing.B) {
	AdminURL(b) // setup outside the timed loop
	s := setup()
	ctx := context.Background()
	for b.Loop() {
		name, err := newName(time.Now())
		require.NoError(b, err)
		require.NoError(b, createDatabase(ctx, s, name))
		require.NoError(b, dropDatabase(ctx, s.adminURL, name))
	}
}

func TestDropOtherTemplatesKeepsTheCurrentAndBusyOnes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	adminURL := AdminURL(t)
	current := templatePrefix + migrations.Hash()
	other := templatePrefix + "00000000000000f0" // a migration set's name shape
	// A test database created after busySince: a run is active, nothing
	// goes. Created before the other template, so that the setup of a test
	// process of another package starting meanwhile, which drops other
	// templates when no test database is recent, finds this one and leaves
	// the other template alone too.
	New(t)
	require.NoError(t, adminExec(ctx, adminURL, fmt.Sprintf(fmtCreateEmpty, ident(other))))
	require.NoError(t, adminExec(ctx, adminURL, fmt.Sprintf(fmtSealTemplate, ident(other))))
	t.Cleanup(func() { _ = dropTemplate(context.Background(), adminURL, other) })

	require.NoError(t, dropOtherTemplates(ctx, adminURL, current, time.Now().Add(-time.Hour)))
	require.True(t, databaseExists(t, other))

	// No test database created since: the other template goes, ours stays.
	require.NoError(t, dropOtherTemplates(ctx, adminURL, current, time.Now().Add(time.Hour)))
	require.False(t, databaseExists(t, other))
	require.True(t, databaseExists(t, current))
}
