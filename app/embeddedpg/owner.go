package embeddedpg

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverUser is the unprivileged account the PostgreSQL programs run as when
// this process is root (PostgreSQL refuses to run as root). nil means "run as
// the current user".
type serverUser struct {
	name string
	uid  uint32
	gid  uint32
}

func (u *serverUser) String() string {
	if u == nil {
		return "current user"
	}
	return fmt.Sprintf("%s (uid %d)", u.name, u.uid)
}

// sysProcAttr makes a child process run as u, with no supplementary groups
// (an empty Groups list drops root's).
func (u *serverUser) sysProcAttr() *syscall.SysProcAttr {
	if u == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}}
}

// candidateUsers are tried in order when running as root: the distribution's
// postgres account first, nobody as a last resort.
var candidateUsers = []string{"postgres", "nobody"}

// chooseServerUser picks who runs the server. Not root: the current user.
// Root: the owner of an existing data directory if that is not root (so a
// cluster keeps its owner between runs), else the first candidate user that
// exists.
func chooseServerUser(dataDir string) (*serverUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if fi, err := os.Stat(dataDir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			name := strconv.FormatUint(uint64(st.Uid), 10)
			if u, err := user.LookupId(name); err == nil {
				name = u.Username
			}
			return &serverUser{name: name, uid: st.Uid, gid: st.Gid}, nil
		}
	}
	for _, name := range candidateUsers {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			continue
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			continue
		}
		if uid == 0 {
			continue
		}
		return &serverUser{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("running as root, and PostgreSQL refuses to run as root, but none of the users %v exists to run it as: create a 'postgres' user (e.g. `useradd --system postgres`) or run as a non-root user", candidateUsers)
}

// prepareDataDir creates the data directory (mode 0700, as PostgreSQL
// requires) and its missing parents (0755), refuses a directory that holds
// something other than a cluster, and, when running as root, gives an empty
// data directory to the server user and makes sure that user can reach it.
// It reports whether the directory already holds a cluster (PG_VERSION is
// written by initdb).
func prepareDataDir(dataDir string, u *serverUser, logger *slog.Logger) (initialised bool, err error) {
	if err := os.MkdirAll(filepath.Dir(dataDir), 0o755); err != nil {
		return false, fmt.Errorf("creating parent of data directory %s: %w", dataDir, err)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("creating data directory %s: %w", dataDir, err)
	}
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return false, fmt.Errorf("reading data directory %s: %w", dataDir, err)
	}
	_, statErr := os.Stat(filepath.Join(dataDir, "PG_VERSION"))
	initialised = statErr == nil
	// Checked before any chown, so a mistyped data_dir pointing at someone's
	// files is left alone.
	if !initialised && len(entries) > 0 {
		return false, fmt.Errorf("data directory %s is not empty and holds no PostgreSQL cluster (no PG_VERSION): empty it or choose another database.data_dir", dataDir)
	}
	if u == nil {
		return initialised, nil
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		return false, fmt.Errorf("inspecting data directory %s: %w", dataDir, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != u.uid {
		if initialised {
			return false, fmt.Errorf("data directory %s holds a cluster owned by uid %d, but PostgreSQL cannot run as root: give it to an unprivileged user (chown -R)", dataDir, st.Uid)
		}
		// Only the (empty) data directory itself: parents belong to whoever
		// made them.
		if err := os.Chown(dataDir, int(u.uid), int(u.gid)); err != nil {
			return false, fmt.Errorf("giving data directory %s to %s: %w", dataDir, u, err)
		}
	}
	return initialised, makeTraversable(filepath.Dir(dataDir), u, logger)
}

// makeTraversable adds the search (x) permission for u to every ancestor
// directory that u could not otherwise pass through. Only search is added,
// never read or write: u can reach the data directory by name but cannot list
// or change the parents. Needed when root keeps data under a 0700 directory
// (a temp dir, root's home).
func makeTraversable(dir string, u *serverUser, logger *slog.Logger) error {
	for {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("inspecting %s: %w", dir, err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !canSearch(fi.Mode(), st, u) {
			mode := fi.Mode().Perm() | 0o001
			if err := os.Chmod(dir, mode); err != nil {
				return fmt.Errorf("letting %s traverse %s: %w", u, dir, err)
			}
			logger.Info("embeddedpg: added search permission so the server user can reach its data directory",
				slog.String("dir", dir), slog.String("mode", mode.String()), slog.String("server_user", u.name))
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// canSearch applies the owner/group/other permission rule for u.
func canSearch(mode fs.FileMode, st *syscall.Stat_t, u *serverUser) bool {
	perm := mode.Perm()
	switch {
	case st.Uid == u.uid:
		return perm&0o100 != 0
	case st.Gid == u.gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// chownFile gives a file we wrote into the data directory to the server user.
func chownFile(path string, u *serverUser) error {
	if u == nil {
		return nil
	}
	if err := os.Chown(path, int(u.uid), int(u.gid)); err != nil {
		return fmt.Errorf("giving %s to %s: %w", path, u, err)
	}
	return nil
}
