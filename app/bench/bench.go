// Package bench is `auditlog bench`: end-to-end throughput and latency
// figures of this system against a PostgreSQL server, like pgbench is for
// PostgreSQL. It creates a scratch database auditlog_bench_<random> on the
// server, migrates it, runs the stages asked for and drops it (unless
// --keep).
//
// Stages (args[0]; "all" runs them in this order):
//
//   - record: the cost of one outbox.Record in a small business
//     transaction (an UPDATE), and of one event sent with outbox.Queue in
//     the same batch as the UPDATE, against the same transaction without
//     either; medians of many, the three kinds interleaved.
//   - pipeline: --events events written through RecordBatch, then relayed
//     (Relay.Drain, as the relay loop moves a backlog) until the outbox is
//     empty; the floor is the same rows inserted into the same audit_events
//     by one INSERT ... SELECT. RecordBatch is compared with a raw COPY of
//     the same rows into the outbox, in phases and batch by batch in turn
//     (interleaved, the figure its target reads). Also the bytes stored per
//     event.
//   - ingest: POST /v1/events with batches of --batch from --clients
//     concurrent clients, against raw COPY of the same rows into the outbox
//     with the same batches and concurrency.
//   - query: latency percentiles of --queries random filtered GET
//     /v1/events requests (every filter alone and with a time window, first
//     and deep pages) over --query-events events bulk-loaded by COPY, and
//     the plan of every query shape (auto_explain), flagging sequential
//     scans and sorts.
//   - export: GET /v1/events/export of --export-events rows, and a tenth of
//     that, against COPY (SELECT * ...) TO STDOUT of the same rows: rows/s,
//     MB/s, time to the first byte and the growth of this process's RSS and
//     Go heap.
//
// The HTTP stages run the API server in this process (httptest on a
// loopback port, built with api.New and the events handlers) with the client
// in the same process, reading and discarding the bytes. So the RSS figures
// are of server and client together, and client and server share the CPU.
//
// Output is one key=value line per figure on stdout (medians over --runs
// runs), ratios, and at the end one target.<name>=pass|miss line per target
// of PERFORMANCE.md. Progress goes to stderr.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/auditlog/auditlog/app/cliflag"
	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/migrations"
	"github.com/auditlog/auditlog/outbox"
)

// Options are what the application passes to Run.
type Options struct {
	// DatabaseURL is a URL (or key=value DSN) of any database on the server
	// to measure, as a user allowed to create databases. The bench creates,
	// uses and drops its own scratch database there. Required.
	DatabaseURL string
	// Logger receives the warnings and errors of the components under
	// measurement (relay, partitions, HTTP server). Default: discard.
	Logger *slog.Logger
}

// Stage names, in the order "all" runs them.
const (
	StageRecord   = "record"
	StagePipeline = "pipeline"
	StageIngest   = "ingest"
	StageQuery    = "query"
	StageExport   = "export"
	StageAll      = "all"
)

var allStages = []string{StageRecord, StagePipeline, StageIngest, StageQuery, StageExport}

// Defaults of the flags.
const (
	EventsDefault       = 200_000
	WorkspacesDefault   = 50
	RunsDefault         = 3
	BatchDefault        = 1000
	ClientsDefault      = 8
	RecordTxsDefault    = 2000
	QueryEventsDefault  = 2_000_000
	QueriesDefault      = 1000
	DeepPageDefault     = 20
	ExportEventsDefault = 1_000_000
)

// config is the parsed command line.
type config struct {
	stages       []string
	events       int
	workspaces   int
	runs         int
	seed         uint64
	keep         bool
	batch        int
	clients      int
	relayBatch   int
	recordTxs    int
	queryEvents  int
	queries      int
	deepPage     int
	exportEvents int
	checkpoint   bool
	plansFile    string
	profileDir   string
}

// usage is printed for -h.
const usage = `usage: auditlog bench <record|pipeline|ingest|query|export|all> [flags]

Creates a scratch database auditlog_bench_<random> on the configured server,
measures, prints key=value figures on stdout and drops the database.
`

func parseArgs(args []string, stderr io.Writer) (config, error) {
	var c config
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return c, errors.New("bench: name a stage: record, pipeline, ingest, query, export or all")
	}
	stage := args[0]
	switch stage {
	case StageAll:
		c.stages = allStages
	case StageRecord, StagePipeline, StageIngest, StageQuery, StageExport:
		c.stages = []string{stage}
	default:
		return c, fmt.Errorf("bench: unknown stage %q", stage)
	}
	fs := flag.NewFlagSet("bench "+stage, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage, "\nflags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&c.events, "events", EventsDefault, "events written by the pipeline and ingest stages")
	fs.IntVar(&c.workspaces, "workspaces", WorkspacesDefault, "workspaces the events are spread over")
	fs.IntVar(&c.runs, "runs", RunsDefault, "repeat each measurement this many times and report medians")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the generated data and query mix")
	fs.BoolVar(&c.keep, "keep", false, "keep the scratch database (its name is printed as bench.database)")
	fs.IntVar(&c.batch, "batch", BatchDefault, "events per RecordBatch / COPY / ingest request")
	fs.IntVar(&c.clients, "clients", ClientsDefault, "concurrent clients of the ingest stage")
	fs.IntVar(&c.relayBatch, "relay-batch", 0, "relay batch size (default: the relay's default)")
	fs.IntVar(&c.recordTxs, "record-txs", RecordTxsDefault, "transactions of each kind per run of the record stage")
	fs.IntVar(&c.queryEvents, "query-events", QueryEventsDefault, "events loaded for the query stage")
	fs.IntVar(&c.queries, "queries", QueriesDefault, "queries per run of the query stage")
	fs.IntVar(&c.deepPage, "deep-page", DeepPageDefault, "page number a deep-page query asks for")
	fs.IntVar(&c.exportEvents, "export-events", ExportEventsDefault, "rows of the large export (the small one is a tenth)")
	fs.BoolVar(&c.checkpoint, "checkpoint", true, "CHECKPOINT before each timed phase (needs superuser or pg_checkpoint)")
	fs.StringVar(&c.plansFile, "plans", "", "write the EXPLAIN (ANALYZE, BUFFERS) plan of every query shape to this file")
	fs.StringVar(&c.profileDir, "cpuprofile", "", "write a Go CPU profile of each stage (<stage>.pprof) to this directory")
	if err := cliflag.Parse(fs, args[1:]); err != nil {
		return c, fmt.Errorf("bench: %w", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	for _, chk := range []struct {
		name string
		v    int
		min  int
	}{
		{"events", c.events, 1}, {"workspaces", c.workspaces, 1}, {"runs", c.runs, 1},
		{"batch", c.batch, 1}, {"clients", c.clients, 1}, {"relay-batch", c.relayBatch, 0},
		{"record-txs", c.recordTxs, 1}, {"query-events", c.queryEvents, 1}, {"queries", c.queries, 1},
		{"deep-page", c.deepPage, 2}, {"export-events", c.exportEvents, 10},
	} {
		if chk.v < chk.min {
			return c, fmt.Errorf("bench: --%s must be at least %d, got %d", chk.name, chk.min, chk.v)
		}
	}
	if c.workspaces > 9999 {
		return c, fmt.Errorf("bench: --workspaces must be at most 9999, got %d", c.workspaces)
	}
	return c, nil
}

// bench is one run of the command: the scratch database and what the stages
// share.
type bench struct {
	cfg    config
	opts   Options
	stderr io.Writer
	out    *report
	log    *slog.Logger // for the components under measurement

	adminCfg *pgx.ConnConfig
	poolCfg  *pgxpool.Config
	dbName   string
	pool     *pgxpool.Pool
	maint    *partitions.Maintainer
	rec      *outbox.Recorder

	workspaces []string
	// now is the newest occurred_at of generated data: a little in the
	// past, so that no event is "in the future" for the validation.
	now time.Time

	checkpointWarned bool
	srv              *server // the in-process API server, built on first use
}

// CheckArgs parses args as Run would, without touching a database, so a
// caller can refuse bad arguments (or answer --help) before starting one.
func CheckArgs(args []string, stderr io.Writer) error {
	_, err := parseArgs(args, stderr)
	return err
}

// Run runs the bench stage named by args[0] with the flags that follow. See
// the package documentation.
func Run(ctx context.Context, args []string, opts Options, stdout, stderr io.Writer) error {
	cfg, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	if opts.DatabaseURL == "" {
		return errors.New("bench: Options.DatabaseURL is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b := &bench{
		cfg:    cfg,
		opts:   opts,
		stderr: stderr,
		out:    &report{w: stdout},
		log:    slog.New(minLevel{h: opts.Logger.Handler(), min: slog.LevelWarn}),
	}
	for i := range cfg.workspaces {
		b.workspaces = append(b.workspaces, fmt.Sprintf("ws_%04d", i))
	}
	start := time.Now()
	if err := b.open(ctx); err != nil {
		b.close()
		return err
	}
	err = b.run(ctx)
	b.out.num("bench.elapsed_s", time.Since(start).Seconds(), 1)
	b.out.text("bench.loadavg_end", loadAverage())
	if err == nil {
		b.out.flushTargets()
	}
	return errors.Join(err, b.close())
}

func (b *bench) run(ctx context.Context) error {
	if err := b.header(ctx); err != nil {
		return err
	}
	for _, stage := range b.cfg.stages {
		b.progress("stage %s", stage)
		stop, err := b.startProfile(stage)
		if err != nil {
			return err
		}
		switch stage {
		case StageRecord:
			err = b.recordStage(ctx)
		case StagePipeline:
			err = b.pipelineStage(ctx)
		case StageIngest:
			err = b.ingestStage(ctx)
		case StageQuery:
			err = b.queryStage(ctx)
		case StageExport:
			err = b.exportStage(ctx)
		}
		stop()
		if err != nil {
			return fmt.Errorf("bench: %s: %w", stage, err)
		}
	}
	return nil
}

// startProfile starts a CPU profile of the stage when --cpuprofile is set.
func (b *bench) startProfile(stage string) (stop func(), err error) {
	if b.cfg.profileDir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(b.cfg.profileDir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: creating the profile directory: %w", err)
	}
	f, err := os.Create(filepath.Join(b.cfg.profileDir, stage+".pprof"))
	if err != nil {
		return nil, fmt.Errorf("bench: creating the %s profile: %w", stage, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: starting the %s profile: %w", stage, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// open creates, migrates and connects to the scratch database and creates
// the partitions of the retention window.
func (b *bench) open(ctx context.Context) error {
	adminCfg, err := pgx.ParseConfig(b.opts.DatabaseURL)
	if err != nil {
		return fmt.Errorf("bench: parsing the database URL: %w", err)
	}
	b.adminCfg = adminCfg
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "auditlog_bench_" + hex.EncodeToString(rnd[:])
	if err := b.adminExec(ctx, fmt.Sprintf(fmtCreateDatabase, pgx.Identifier{name}.Sanitize())); err != nil {
		return fmt.Errorf("bench: creating scratch database %s: %w", name, err)
	}
	b.dbName = name
	b.out.text("bench.database", name)

	poolCfg, err := pgxpool.ParseConfig(b.opts.DatabaseURL)
	if err != nil {
		return fmt.Errorf("bench: parsing the database URL: %w", err)
	}
	poolCfg.ConnConfig.Database = name
	poolCfg.MaxConns = int32(max(16, 2*b.cfg.clients+4))
	b.poolCfg = poolCfg

	db := stdlib.OpenDB(*poolCfg.ConnConfig.Copy())
	_, err = migrations.Up(ctx, db)
	db.Close()
	if err != nil {
		return fmt.Errorf("bench: migrating %s: %w", name, err)
	}
	b.pool, err = pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("bench: connecting to %s: %w", name, err)
	}
	for _, q := range []string{createDatasetsSQL} {
		if _, err := b.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("bench: preparing %s: %w", name, err)
		}
	}
	b.maint, err = partitions.New(b.pool, partitions.Config{
		Interval:      partitions.IntervalMonth,
		RetentionDays: outbox.DefaultRetention,
		Premake:       3,
		Logger:        b.log,
	})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if _, err := b.maint.Ensure(ctx); err != nil {
		return fmt.Errorf("bench: creating partitions: %w", err)
	}
	b.rec, err = outbox.New(outbox.Options{})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	b.now = time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	return nil
}

// close stops the server and drops the scratch database unless --keep.
func (b *bench) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.srv != nil {
		b.srv.close()
	}
	if b.pool != nil {
		b.pool.Close()
	}
	if b.dbName == "" {
		return nil
	}
	if b.cfg.keep {
		b.progress("kept scratch database %s", b.dbName)
		return nil
	}
	if err := b.adminExec(ctx, fmt.Sprintf(fmtDropDatabase, pgx.Identifier{b.dbName}.Sanitize())); err != nil {
		return fmt.Errorf("bench: dropping scratch database %s: %w", b.dbName, err)
	}
	return nil
}

// adminExec runs one statement on a connection to the admin database.
func (b *bench) adminExec(ctx context.Context, stmt string) error {
	conn, err := pgx.ConnectConfig(ctx, b.adminCfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, stmt)
	return err
}

// header prints the figures that describe the machine and the settings.
func (b *bench) header(ctx context.Context) error {
	var version, sharedBuffers, syncCommit, maxWAL, fpw, autovacuum, jit string
	var ssl bool
	if err := b.pool.QueryRow(ctx, serverVersionSQL).Scan(&version); err != nil {
		return fmt.Errorf("bench: reading the server version: %w", err)
	}
	if err := b.pool.QueryRow(ctx, settingsSQL).Scan(&sharedBuffers, &syncCommit, &maxWAL, &fpw, &autovacuum, &jit, &ssl); err != nil {
		return fmt.Errorf("bench: reading server settings: %w", err)
	}
	o := b.out
	o.text("bench.stages", strings.Join(b.cfg.stages, ","))
	o.num("bench.runs", float64(b.cfg.runs), 0)
	o.num("bench.nproc", float64(runtime.NumCPU()), 0)
	o.num("bench.mem_total_mib", float64(memTotalMiB()), 0)
	o.text("bench.go", runtime.Version())
	o.text("bench.postgres", strings.Fields(version)[0])
	o.text("bench.pg_shared_buffers", sharedBuffers)
	o.text("bench.pg_synchronous_commit", syncCommit)
	o.text("bench.pg_max_wal_size", maxWAL)
	o.text("bench.pg_full_page_writes", fpw)
	o.text("bench.pg_autovacuum", autovacuum)
	o.text("bench.pg_jit", jit)
	o.text("bench.pg_ssl", fmt.Sprint(ssl))
	o.text("bench.loadavg_start", loadAverage())
	// pg_current_wal_insert_lsn is cluster-wide: on a shared server the
	// *_wal_bytes_per_event figures include other databases' writes.
	o.text("bench.wal_scope", "cluster")
	return nil
}

// progress writes a line of progress to stderr.
func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, "bench: "+format+"\n", args...)
}

// checkpoint flushes dirty buffers before a timed phase so that each phase
// starts from the same state. It needs superuser or pg_checkpoint; without
// it the bench warns once and goes on.
func (b *bench) checkpoint(ctx context.Context) {
	if !b.cfg.checkpoint {
		return
	}
	if _, err := b.pool.Exec(ctx, checkpointSQL); err != nil && !b.checkpointWarned {
		b.checkpointWarned = true
		b.progress("CHECKPOINT failed, phases start with whatever is dirty: %v", err)
	}
}

// walPosition returns the WAL insert position in bytes.
func (b *bench) walPosition(ctx context.Context) int64 {
	var n int64
	_ = b.pool.QueryRow(ctx, walLSNSQL).Scan(&n)
	return n
}

// phase runs one timed phase over n events after a CHECKPOINT and records
// in rs its events/s under name and its WAL bytes per event under
// name+"_wal". It returns the phase's duration.
func (b *bench) phase(ctx context.Context, rs runs, name string, n int, run func() (time.Duration, error)) (time.Duration, error) {
	b.checkpoint(ctx)
	wal0 := b.walPosition(ctx)
	d, err := run()
	if err != nil {
		return 0, err
	}
	rs.add(name, perSecond(n, d))
	rs.add(name+"_wal", float64(b.walPosition(ctx)-wal0)/float64(n))
	return d, nil
}

// resetStore empties the outbox and the store.
func (b *bench) resetStore(ctx context.Context) error {
	if _, err := b.pool.Exec(ctx, truncateAllSQL); err != nil {
		return fmt.Errorf("truncating audit_outbox and audit_events: %w", err)
	}
	return nil
}

func (b *bench) count(ctx context.Context, sql string) (int64, error) {
	var n int64
	if err := b.pool.QueryRow(ctx, sql).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting rows (%s): %w", sql, err)
	}
	return n, nil
}

// minLevel drops records below min; the components under measurement log
// every request and batch at info, which would drown the figures.
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}
func (m minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }
func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h: m.h.WithAttrs(as), min: m.min}
}
func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h: m.h.WithGroup(name), min: m.min}
}
