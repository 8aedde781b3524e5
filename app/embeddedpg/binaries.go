package embeddedpg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// serverBinaries are the programs a data directory needs: initdb creates it,
// pg_ctl starts and stops the server, postgres is the server itself (pg_ctl
// looks for it next to its own executable).
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// defaultBinGlobs are the well-known install locations tried after PATH and
// pg_config, newest version first: Debian/Ubuntu, the PGDG RPMs, and
// Homebrew's keg-only postgresql@N formulae (Apple silicon, then Intel).
var defaultBinGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/opt/homebrew/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql@*/bin",
}

// binarySearch says where FindBinaries looks. The zero value means the real
// environment; tests point it at empty places.
type binarySearch struct {
	// path is a PATH-style list of directories; used when pathSet.
	path    string
	pathSet bool
	// globs replace defaultBinGlobs when non-nil.
	globs []string
}

func (s binarySearch) pathList() string {
	if s.pathSet {
		return s.path
	}
	return os.Getenv("PATH")
}

func (s binarySearch) globList() []string {
	if s.globs != nil {
		return s.globs
	}
	return defaultBinGlobs
}

// FindBinaries returns the directory holding the PostgreSQL server programs
// (initdb, pg_ctl, postgres). It looks, in order, on PATH, in the directory
// reported by `pg_config --bindir`, then in the newest of the well-known
// install locations (/usr/lib/postgresql/*/bin and others). The error, when
// nothing is found, says what to install.
func FindBinaries() (string, error) {
	return binarySearch{}.find()
}

func (s binarySearch) find() (string, error) {
	if dir, ok := s.fromPath(); ok {
		return dir, nil
	}
	if dir, ok := s.fromPgConfig(); ok {
		return dir, nil
	}
	if dir, ok := s.fromGlobs(); ok {
		return dir, nil
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (%s) found (looked on PATH, pg_config --bindir, %s): "+
		"install them, e.g. `apt-get install postgresql` or `brew install postgresql@15`, "+
		"or set database.url to an existing PostgreSQL server",
		strings.Join(serverBinaries, ", "), strings.Join(s.globList(), ", "))
}

// fromPath finds initdb on PATH. Distributions often put symlinks on PATH
// (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb), so the
// symlink's target directory is preferred when it holds all the programs.
func (s binarySearch) fromPath() (string, bool) {
	for _, dir := range filepath.SplitList(s.pathList()) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue // relative PATH entries are a security hazard; skip them.
		}
		initdb := filepath.Join(dir, "initdb")
		if !isExecutable(initdb) {
			continue
		}
		if real, err := filepath.EvalSymlinks(initdb); err == nil {
			if realDir := filepath.Dir(real); hasServerBinaries(realDir) {
				return realDir, true
			}
		}
		if hasServerBinaries(dir) {
			return dir, true
		}
	}
	return "", false
}

// fromPgConfig asks pg_config (found on PATH) where the binaries live; it is
// often installed with the client libraries while the server programs stay
// off PATH (Debian's /usr/lib/postgresql/N/bin).
func (s binarySearch) fromPgConfig() (string, bool) {
	for _, dir := range filepath.SplitList(s.pathList()) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		pgConfig := filepath.Join(dir, "pg_config")
		if !isExecutable(pgConfig) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, pgConfig, "--bindir").Output()
		cancel()
		if err != nil {
			continue
		}
		if bin := strings.TrimSpace(string(out)); hasServerBinaries(bin) {
			return bin, true
		}
	}
	return "", false
}

// fromGlobs returns the matching directory with the highest version number.
func (s binarySearch) fromGlobs() (string, bool) {
	var best string
	var bestVersion []int
	for _, pattern := range s.globList() {
		matches, err := filepath.Glob(pattern)
		if err != nil {
			continue
		}
		for _, dir := range matches {
			if !hasServerBinaries(dir) {
				continue
			}
			v := versionOf(dir)
			if best == "" || slices.Compare(v, bestVersion) > 0 {
				best, bestVersion = dir, v
			}
		}
	}
	return best, best != ""
}

var digitsRE = regexp.MustCompile(`[0-9]+`)

// versionOf extracts the numbers in an install path ("/usr/pgsql-9.6/bin" is
// [9 6]) so that 10 sorts after 9.
func versionOf(dir string) []int {
	var v []int
	for _, d := range digitsRE.FindAllString(dir, -1) {
		n, err := strconv.Atoi(d)
		if err != nil {
			continue
		}
		v = append(v, n)
	}
	return v
}

func hasServerBinaries(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range serverBinaries {
		if !isExecutable(filepath.Join(dir, name)) {
			return false
		}
	}
	return true
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	return fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
