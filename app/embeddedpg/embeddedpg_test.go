package embeddedpg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// freePort asks the kernel for a free TCP port on 127.0.0.1. Another process
// could take it before the server binds; unlikely enough for tests.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startCluster starts a cluster in a fresh temp dir and stops it at cleanup.
func startCluster(t *testing.T, dataDir string) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Config{DataDir: dataDir, Port: freePort(t), Logger: testLogger()})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
	return c
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func countRows(t *testing.T, url string) int {
	t.Helper()
	var n int
	require.NoError(t, connect(t, url).QueryRow(context.Background(), `SELECT count(*) FROM kept`).Scan(&n))
	return n
}

func TestStartStopRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dataDir := filepath.Join(t.TempDir(), "nested", "postgres")
	c := startCluster(t, dataDir)

	require.Equal(t, "postgres://postgres@127.0.0.1:"+strconv.Itoa(c.Port())+"/auditlog?sslmode=disable", c.URL())
	conn := connect(t, c.URL())
	var db, encoding string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database(), pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()`).Scan(&db, &encoding))
	require.Equal(t, "auditlog", db)
	require.Equal(t, "UTF8", encoding)
	_, err := conn.Exec(ctx, `CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)`)
	require.NoError(t, err)
	conn.Close(ctx)

	require.NoError(t, c.Stop(ctx))
	_, err = pgx.Connect(ctx, c.URL())
	require.Error(t, err, "server still accepts connections after Stop")
	require.NoError(t, c.Stop(ctx), "stopping a stopped cluster")

	// Restarted on another port: auditlog.conf is rewritten at every start.
	c2 := startCluster(t, dataDir)
	require.NotEqual(t, c.Port(), c2.Port())
	require.Equal(t, 2, countRows(t, c2.URL()))
}

func TestStartAfterServerWasKilled(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "pg")
	c := startCluster(t, dataDir)
	_, err := connect(t, c.URL()).Exec(context.Background(), `CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)`)
	require.NoError(t, err)

	// A killed postmaster leaves postmaster.pid behind, naming a dead pid.
	pid := postmasterPID(t, dataDir)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) },
		30*time.Second, 20*time.Millisecond, "postmaster did not die")
	require.FileExists(t, filepath.Join(dataDir, "postmaster.pid"))

	c2 := startCluster(t, dataDir)
	require.NotEqual(t, pid, postmasterPID(t, dataDir))
	require.Equal(t, 1, countRows(t, c2.URL()))
}

func TestConcurrentStartsShareOneServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dataDir := filepath.Join(t.TempDir(), "pg")
	port := freePort(t)

	// Two processes starting the same fresh cluster at once (goroutines take
	// the same file lock as processes would): one initialises and starts it,
	// the other adopts it.
	clusters := make([]*Cluster, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range clusters {
		wg.Go(func() {
			clusters[i], errs[i] = Start(ctx, Config{DataDir: dataDir, Port: port, Logger: testLogger()})
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	t.Cleanup(func() { require.NoError(t, clusters[0].Stop(context.Background())) })
	pid := postmasterPID(t, dataDir)

	// A later Start configured with another port adopts the running server
	// on its actual port instead of failing.
	other, err := Start(ctx, Config{DataDir: dataDir, Port: freePort(t), Logger: testLogger()})
	require.NoError(t, err)
	require.Equal(t, port, other.Port())
	require.Equal(t, pid, postmasterPID(t, dataDir))
	for _, c := range append(clusters, other) {
		require.NoError(t, connect(t, c.URL()).Ping(ctx))
	}
}

func postmasterPID(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	return pid
}

func TestStartRejectsNonClusterDirectory(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "notes.txt"), []byte("mine"), 0o644))
	_, err := Start(context.Background(), Config{DataDir: dataDir, Port: freePort(t), Logger: testLogger()})
	require.ErrorContains(t, err, "is not empty and holds no PostgreSQL cluster")
	// Left alone: not given to the server user when running as root.
	fi, err := os.Stat(dataDir)
	require.NoError(t, err)
	require.Equal(t, uint32(os.Geteuid()), fi.Sys().(*syscall.Stat_t).Uid)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := Start(context.Background(), Config{Port: -1})
	require.ErrorContains(t, err, "Config.Port")
	_, err = Start(context.Background(), Config{Port: 70000})
	require.ErrorContains(t, err, "Config.Port")
	_, err = Start(context.Background(), Config{DataDir: "/tmp/$HOME/pg"})
	require.ErrorContains(t, err, "Config.DataDir")

	cfg := Config{}.withDefaults()
	require.Equal(t, DefaultDataDir, cfg.DataDir)
	require.Equal(t, DefaultPort, cfg.Port)
	require.NotNil(t, cfg.Logger)
}

func TestMissingBinariesErrorSaysWhatToInstall(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	search := binarySearch{path: empty, pathSet: true, globs: []string{filepath.Join(empty, "*", "bin")}}

	_, err := search.find()
	require.Error(t, err)
	for _, want := range []string{"no PostgreSQL server binaries", "PATH", "pg_config --bindir", "apt-get install postgresql", "brew install postgresql@15"} {
		require.ErrorContains(t, err, want)
	}

	// Start reports it before touching the data directory.
	dataDir := filepath.Join(empty, "data")
	_, err = Start(context.Background(), Config{DataDir: dataDir, Port: freePort(t), Logger: testLogger(), search: search})
	require.ErrorContains(t, err, "apt-get install postgresql")
	require.NoDirExists(t, dataDir)
}

// fakeBinDir makes a directory holding executable stand-ins for the server
// programs.
func fakeBinDir(t *testing.T, dir string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, name := range serverBinaries {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755))
	}
	return dir
}

func TestFindBinariesPicksNewestInstall(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "10"} {
		fakeBinDir(t, filepath.Join(root, "pg", v, "bin"))
	}
	// Incomplete install (no postgres): ignored even though it is newest.
	incomplete := filepath.Join(root, "pg", "16", "bin")
	require.NoError(t, os.MkdirAll(incomplete, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(incomplete, "initdb"), []byte("#!/bin/sh\n"), 0o755))

	dir, err := binarySearch{pathSet: true, globs: []string{filepath.Join(root, "pg", "*", "bin")}}.find()
	require.NoError(t, err)
	require.Equal(t, filepath.Join(root, "pg", "15", "bin"), dir)
}

func TestFindBinariesFollowsSymlinkOnPath(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	real := fakeBinDir(t, filepath.Join(root, "lib", "postgresql", "15", "bin"))
	onPath := filepath.Join(root, "usr", "local", "bin")
	require.NoError(t, os.MkdirAll(onPath, 0o755))
	// Only initdb is linked onto PATH, like some images do.
	require.NoError(t, os.Symlink(filepath.Join(real, "initdb"), filepath.Join(onPath, "initdb")))

	dir, err := binarySearch{path: "relative/dir" + string(os.PathListSeparator) + onPath, pathSet: true, globs: []string{}}.find()
	require.NoError(t, err)
	require.Equal(t, real, dir)
}

func TestFindBinariesOnThisMachine(t *testing.T) {
	t.Parallel()
	dir, err := FindBinaries()
	require.NoError(t, err, "the embedded cluster tests need PostgreSQL server binaries")
	require.True(t, hasServerBinaries(dir))
}

func TestVersionOf(t *testing.T) {
	t.Parallel()
	require.Equal(t, []int{15}, versionOf("/usr/lib/postgresql/15/bin"))
	require.Equal(t, []int{9, 6}, versionOf("/usr/pgsql-9.6/bin"))
	require.Equal(t, []int{16}, versionOf("/opt/homebrew/opt/postgresql@16/bin"))
}

func TestCanSearch(t *testing.T) {
	t.Parallel()
	u := &serverUser{name: "pg", uid: 100, gid: 200}
	require.True(t, canSearch(0o700, &syscall.Stat_t{Uid: 100, Gid: 0}, u))
	require.False(t, canSearch(0o070, &syscall.Stat_t{Uid: 100, Gid: 200}, u), "owner bits apply to the owner")
	require.True(t, canSearch(0o710, &syscall.Stat_t{Uid: 0, Gid: 200}, u))
	require.False(t, canSearch(0o700, &syscall.Stat_t{Uid: 0, Gid: 0}, u))
	require.True(t, canSearch(0o701, &syscall.Stat_t{Uid: 0, Gid: 0}, u))
}

func TestTail(t *testing.T) {
	t.Parallel()
	require.Equal(t, "c\nd", tail([]byte("a\nb\nc\nd\n"), 2))
	require.Equal(t, "a", tail([]byte("a"), 5))
}

func TestStartErrorQuotesServerLog(t *testing.T) {
	t.Parallel()
	// Something else holds the port, so the server cannot bind it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	_, err = Start(context.Background(), Config{DataDir: filepath.Join(t.TempDir(), "pg"), Port: port, Logger: testLogger()})
	require.Error(t, err)
	require.ErrorContains(t, err, "starting server")
	require.ErrorContains(t, err, "server log")
	require.ErrorContains(t, err, "could not bind IPv4 address", "the server log's tail explains the failure")
}
