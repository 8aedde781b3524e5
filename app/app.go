// Package app is the auditlog binary: configuration, start-up and shutdown
// wiring, and the command line (contract §5). main.go only calls Main.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/auditlog/auditlog/app/config"
)

// Version is the release version, set at build time with
// -ldflags "-X github.com/auditlog/auditlog/app.Version=v1.2.3".
var Version = "dev"

// errUsage marks a command-line mistake: usage is printed and the exit code is 2.
var errUsage = errors.New("usage")

const usageText = `auditlog: the audit-log service

Usage:
  auditlog [serve]                         HTTP API + relay + partition maintenance (migrates on start)
  auditlog migrate                         apply migrations and exit
  auditlog keys create --workspace W --scopes events:read,events:write [--name N]
  auditlog keys list --workspace W
  auditlog keys revoke ID
  auditlog export --workspace W [filters] [--format csv|ndjson] [-o FILE]
  auditlog partitions list | ensure | prune [--dry-run]
  auditlog deadletters list | retry [--all | POS ...]
  auditlog members invite --workspace W --email E [--role owner] [--name N] [--slack-user U]
  auditlog bench [pipeline|ingest|query|export|all] [flags]
  auditlog integrity keygen [--out FILE]   new Ed25519 checkpoint signing key (FILE and FILE.pub)
  auditlog integrity checkpoint [--workspace W]  sign chain heads now
  auditlog verify --workspace W [--public-key KEY] [--json]   check a workspace's hash chain in the database
  auditlog verify --file EXPORT.ndjson --public-key KEY --checkpoints CHECKPOINTS.json [--json]   offline
  auditlog healthcheck [--path /healthz] [--timeout 3s]   exit 0 when the local server answers 200 (container HEALTHCHECK)
  auditlog version

Every command takes --config PATH (default: config.yaml in the working
directory when present). Every key can be overridden by AUDITLOG_<SECTION>_<KEY>.
`

// env is what a command runs with.
type env struct {
	stdout, stderr io.Writer
	cfg            config.Config
	logger         *slog.Logger
}

// Main runs the command line and returns the process exit code. SIGINT or
// SIGTERM cancels the command (serve stops gracefully); a second one exits
// at once (see interrupts).
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	intr := watchInterrupts(cancel, slog.New(slog.NewJSONHandler(stderr, nil)), os.Exit)
	defer intr.stop()
	err := run(ctx, intr, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprint(stderr, usageText)
		if msg := strings.TrimPrefix(err.Error(), errUsage.Error()); msg != "" {
			fmt.Fprintf(stderr, "\nerror%s\n", msg)
		}
		return 2
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errVerifyFailed):
		return 1 // the report says why
	default:
		fmt.Fprintf(stderr, "auditlog: %v\n", err)
		return 1
	}
}

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

func run(ctx context.Context, intr *interrupts, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	commands := map[string]func(context.Context, *env, []string) error{
		"serve":       runServe,
		"migrate":     runMigrate,
		"keys":        runKeys,
		"export":      runExport,
		"partitions":  runPartitions,
		"deadletters": runDeadLetters,
		"bench":       runBench,
		"members":     runMembers,
		"healthcheck": runHealthcheck,
		"integrity":   runIntegrity,
		"verify":      runVerify,
	}
	fn, ok := commands[cmd]
	if !ok {
		return usagef("unknown command %q", cmd)
	}
	configPath, rest, err := extractConfigFlag(args)
	if err != nil {
		return err
	}
	environ := os.Environ()
	cfg, err := config.Load(configPath, environ)
	if err != nil {
		return fmt.Errorf("loading configuration: %w", err)
	}
	logger := newLogger(cfg, stderr)
	intr.setLogger(logger)
	for _, name := range config.IgnoredEnv(environ) {
		// The name only: values may be secrets.
		logger.Warn("environment variable names no setting, ignored", "variable", name)
	}
	return fn(ctx, &env{stdout: stdout, stderr: stderr, cfg: cfg, logger: logger}, rest)
}

// extractConfigFlag takes --config PATH (or --config=PATH) out of args
// wherever it stands, so every command accepts it.
func extractConfigFlag(args []string) (string, []string, error) {
	var path string
	rest := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--config" || a == "-config":
			if i+1 >= len(args) {
				return "", nil, usagef("--config needs a path")
			}
			path = args[i+1]
			i++
		case strings.HasPrefix(a, "--config="), strings.HasPrefix(a, "-config="):
			path = a[strings.Index(a, "=")+1:]
		default:
			rest = append(rest, a)
		}
	}
	return path, rest, nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func versionString() string {
	s := "auditlog " + Version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
				s += " (" + kv.Value[:12] + ")"
			}
		}
		s += " " + bi.GoVersion
	}
	return s
}

// withDatabase opens the database (embedded when database.url is empty),
// applies migrations and runs fn.
func withDatabase(ctx context.Context, e *env, fn func(*database) error) error {
	db, err := openDatabase(ctx, e.cfg, e.logger)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	if _, err := db.Migrate(ctx); err != nil {
		return err
	}
	return fn(db)
}

func runMigrate(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usagef("migrate takes no arguments")
	}
	db, err := openDatabase(ctx, e.cfg, e.logger)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	n, err := db.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "applied %d migration(s)\n", n)
	return nil
}
