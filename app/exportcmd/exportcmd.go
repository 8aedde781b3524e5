// Package exportcmd is `auditlog export`: the export of package events (CSV,
// or ndjson for offline verification), run from the command line straight
// against the database, with progress on stderr.
//
//	auditlog export --workspace W [--actor-email E]... [--actor-id I]...
//	    [--action A]... [--resource-type T]... [--source S]...
//	    [--from RFC3339] [--to RFC3339] [--format csv|ndjson] [-o FILE]
//
// Filters are those of GET /v1/events/export and are validated the same way;
// repeat a flag to match any of its values. The query parameters' spellings
// (--actor_email, --actor_id, --resource_type) are accepted too. Mistakes
// in the arguments are found by Parse, before any connection. The export goes to FILE (written to
// a temporary file beside it and renamed into place only when complete, so
// FILE is never a truncated export) or to stdout. On a terminal, progress
// (rows, bytes, rate) is redrawn on stderr every second; a summary line is
// always printed.
//
// Like every export, a run is recorded as an audit_log.export event in the
// workspace: actor {type: service, id: auditlog-cli, name: the OS user
// running the command}, source "cli" (the command runs on the server, so no
// client address applies and ip is null). An interrupted run (Ctrl-C) is
// recorded with complete=false; a killed one by serve's sweep of export
// intents. If the export cannot be recorded as begun, nothing is exported;
// if its event cannot be recorded at the end, the command fails and FILE is
// not written.
package exportcmd

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/term"

	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/app/cliflag"
	"github.com/auditlog/auditlog/outbox"
)

// Actor of the export events the command records.
const (
	ActorID = "auditlog-cli"
	Source  = "cli"
)

// Options configure Export.
type Options struct {
	// CSVFormulaGuard is export.csv_formula_guard (default true in the
	// configuration).
	CSVFormulaGuard bool
	// Recorder records the export event. Default outbox.Default().
	Recorder *outbox.Recorder

	// progressEvery is the progress redraw interval; default one second.
	progressEvery time.Duration
	// forceProgress draws progress even when stderr is not a terminal
	// (tests).
	forceProgress bool
}

// recordTimeout bounds recording the export event, which also runs after an
// interrupt cancelled ctx.
const recordTimeout = 10 * time.Second

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// flagParams maps each filter flag to its query parameter.
var flagParams = []struct{ flag, param, usage string }{
	{"actor-email", events.ParamActorEmail, "actor email (repeatable)"},
	{"actor-id", events.ParamActorID, "actor id (repeatable)"},
	{"action", events.ParamAction, "action, or prefix ending in * such as ticket.* (repeatable)"},
	{"resource-type", events.ParamResourceType, "resource type (repeatable)"},
	{"source", events.ParamSource, "source (repeatable)"},
}

// Request is a parsed command line: what to export and where.
type Request struct {
	workspace string
	filters   events.Filters
	format    string
	out       string
}

// argErrorf returns an error about the command's arguments.
func argErrorf(format string, args ...any) error {
	return fmt.Errorf("export: "+format, args...)
}

// Parse parses and validates the command's arguments without touching the
// database, so a mistake is reported before a connection is made. Every
// error but flag.ErrHelp is a mistake in the arguments.
func Parse(args []string, stderr io.Writer) (*Request, error) {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workspace := fs.String("workspace", "", "workspace to export (required)")
	out := fs.String("o", "", "write the export to `FILE` instead of stdout")
	format := fs.String("format", events.FormatCSV, "csv, or ndjson (seq order, with seq, hash and prev_hash: for auditlog verify --file)")
	from := fs.String("from", "", "inclusive lower bound of occurred_at (RFC 3339)")
	to := fs.String("to", "", "exclusive upper bound of occurred_at (RFC 3339)")
	// --config is read by the caller before dispatching; accepted here so it
	// may stand among the command's own flags.
	fs.String("config", "", "configuration file (read by auditlog itself)")
	lists := make([]multi, len(flagParams))
	for i, fp := range flagParams {
		fs.Var(&lists[i], fp.flag, fp.usage)
		if fp.param != fp.flag {
			// The query parameter's own spelling works too (--actor_email).
			fs.Var(&lists[i], fp.param, "same as --"+fp.flag)
		}
	}
	if err := cliflag.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, argErrorf("%w", err)
	}
	if fs.NArg() > 0 {
		return nil, argErrorf("unexpected argument %q", fs.Arg(0))
	}
	if *workspace == "" {
		return nil, argErrorf("--workspace is required")
	}
	if *format != events.FormatCSV && *format != events.FormatNDJSON {
		return nil, argErrorf("--format %q: want csv or ndjson", *format)
	}
	if !outbox.ValidWorkspaceID(*workspace) {
		return nil, argErrorf("--workspace %q must be 1-64 characters of A-Z a-z 0-9 . _ : -", *workspace)
	}

	v := url.Values{}
	for i, fp := range flagParams {
		if len(lists[i]) > 0 {
			v[fp.param] = lists[i]
		}
	}
	if *from != "" {
		v.Set(events.ParamFrom, *from)
	}
	if *to != "" {
		v.Set(events.ParamTo, *to)
	}
	filters, err := events.ParseFilters(v)
	if err != nil {
		var pe *events.ParamError
		if errors.As(err, &pe) {
			return nil, argErrorf("--%s: %s", strings.ReplaceAll(pe.Param, "_", "-"), pe.Message)
		}
		return nil, argErrorf("%v", err)
	}
	return &Request{workspace: *workspace, filters: filters, format: *format, out: *out}, nil
}

// Export runs the export req describes and records it.
func Export(ctx context.Context, pool *pgxpool.Pool, opts Options, req *Request, stdout, stderr io.Writer) error {
	if pool == nil {
		return errors.New("export: pool is required")
	}
	if opts.Recorder == nil {
		opts.Recorder = outbox.Default()
	}
	if opts.progressEvery <= 0 {
		opts.progressEvery = time.Second
	}
	var dest io.Writer = stdout
	var tmp *os.File
	if req.out != "" && req.out != "-" {
		var err error
		tmp, err = os.CreateTemp(filepath.Dir(req.out), "."+filepath.Base(req.out)+".*.partial")
		if err != nil {
			return fmt.Errorf("export: creating output file: %w", err)
		}
		defer func() {
			if tmp != nil { // not renamed into place: discard
				_ = tmp.Close()
				_ = os.Remove(tmp.Name())
			}
		}()
		dest = tmp
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("export: connecting to the database: %w", err)
	}
	defer conn.Release() // a connection closed by an interrupted COPY is discarded by the pool
	// Fail closed, as the HTTP export: no byte is written before the export
	// is written down as begun, so a crash cannot leave it unrecorded.
	actor := outbox.Actor{Type: outbox.ActorService, ID: ActorID, Name: osUser()}
	intent, err := events.BeginExportIntent(ctx, conn.Conn(), req.workspace, req.filters, req.format, actor, Source)
	if err != nil {
		return fmt.Errorf("export: not started, as it could not be recorded: %w", err)
	}

	buf := bufio.NewWriterSize(dest, 64<<10)
	cw := &events.CountingWriter{W: buf, NDJSON: req.format == events.FormatNDJSON}
	began := time.Now()
	stopProgress := startProgress(stderr, cw, began, opts)

	var rows int64
	var exportErr error
	if req.format == events.FormatNDJSON {
		rows, exportErr = events.ExportNDJSON(ctx, conn.Conn(), req.workspace, req.filters, cw)
	} else {
		rows, exportErr = events.Export(ctx, conn.Conn(), req.workspace, req.filters, opts.CSVFormulaGuard, cw)
	}
	if exportErr == nil {
		if err := buf.Flush(); err != nil {
			exportErr = fmt.Errorf("writing output: %w", err)
		}
	}
	stopProgress()
	complete := exportErr == nil
	if !complete {
		rows = cw.Rows()
	}

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := intent.End(rctx, pool, opts.Recorder, rows, complete); err != nil {
		return errors.Join(exportErr, fmt.Errorf("export: %w", err))
	}
	if exportErr != nil {
		fmt.Fprintf(stderr, "export failed after %d rows (%s): %v\n", rows, humanBytes(cw.Bytes()), exportErr)
		return fmt.Errorf("export: %w", exportErr)
	}

	target := "stdout"
	if tmp != nil {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("export: syncing output file: %w", err)
		}
		if err := tmp.Close(); err != nil {
			return fmt.Errorf("export: closing output file: %w", err)
		}
		if err := os.Rename(tmp.Name(), req.out); err != nil {
			_ = os.Remove(tmp.Name())
			tmp = nil
			return fmt.Errorf("export: moving output into place: %w", err)
		}
		tmp = nil
		target = req.out
	}
	elapsed := time.Since(began)
	fmt.Fprintf(stderr, "exported %d rows (%s) in %s to %s\n", rows, humanBytes(cw.Bytes()), elapsed.Round(time.Millisecond), target)
	return nil
}

// osUser names the operating-system user running the command, "" if unknown.
func osUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

// startProgress redraws a progress line on stderr every opts.progressEvery
// while stderr is a terminal; the returned func stops it and clears the
// line.
func startProgress(stderr io.Writer, cw *events.CountingWriter, began time.Time, opts Options) func() {
	if !opts.forceProgress && !isTerminal(stderr) {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(opts.progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(stderr, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(stderr, "\r\033[K%s", progressLine(cw.Rows(), cw.Bytes(), time.Since(began)))
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

func progressLine(rows, bytes int64, elapsed time.Duration) string {
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(rows) / s
	}
	return fmt.Sprintf("%d rows, %s, %.0f rows/s", rows, humanBytes(bytes), rate)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
