package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/auditlog/auditlog/api/checkpoints"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/auditlog/auditlog/api"
	"github.com/auditlog/auditlog/api/events"
	"github.com/auditlog/auditlog/app/partitions"
	"github.com/auditlog/auditlog/modules"
	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/relay"
)

// stopTimeout bounds each stop after HTTP has drained (which
// http.shutdown_grace bounds): the relay's batch in flight and the
// partition cron's run in progress.
const stopTimeout = 10 * time.Second

func (e *env) recorder() (*outbox.Recorder, error) {
	return outbox.New(outbox.Options{
		NullIPSources:   e.cfg.Events.NullIPSources,
		MaxDetailsBytes: e.cfg.Events.MaxDetailsBytes,
		RetentionDays:   e.cfg.Retention.Days,
	})
}

// runServe runs the HTTP API, the relay, partition maintenance and the
// in-app modules until SIGINT/SIGTERM, then stops them in dependency order,
// logging "auditlog: stopped" with the component after each: stop
// accepting and drain HTTP (exports included) for up to http.shutdown_grace,
// stop the automation runner and the export sweep, let the relay finish its
// batch, stop cron, close the pool and stop the embedded database. A second
// signal exits at once (see interrupts).
func runServe(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usagef("serve takes no arguments, got %q", args[0])
	}
	log := e.logger
	log.Info("auditlog: starting", "version", Version)

	db, err := openDatabase(ctx, e.cfg, log)
	if err != nil {
		return err
	}
	db.ownsEmbedded = true
	closeDB := sync.OnceFunc(func() { db.Close(context.Background()) })
	defer closeDB()
	n, err := db.Migrate(ctx)
	if err != nil {
		return err
	}
	log.Info("auditlog: migrations applied", "applied", n)

	rec, err := e.recorder()
	if err != nil {
		return err
	}
	outbox.SetDefault(rec)
	reg := prometheus.NewRegistry()

	cps, err := e.checkpointer(db)
	if err != nil {
		return err
	}
	if err := cps.Register(reg); err != nil {
		return err
	}
	maint, err := partitions.New(db.Pool, partitions.Config{
		Interval:      e.cfg.Retention.PartitionInterval,
		RetentionDays: e.cfg.Retention.Days,
		Premake:       e.cfg.Retention.Premake,
		Logger:        log,
		Registerer:    reg,
		BeforeDrop:    cps.BeforeDrop,
	})
	if err != nil {
		return err
	}
	// Start runs ensure + prune once now, so partitions exist before the
	// relay's first move, then on retention.schedule.
	if err := maint.Start(ctx, e.cfg.Retention.Schedule); err != nil {
		return fmt.Errorf("starting partition maintenance: %w", err)
	}
	stopMaint := func() {
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		maint.Stop(sctx)
	}
	defer stopMaint()
	stopCheckpoints, err := startCheckpoints(ctx, cps, e.cfg.Integrity.CheckpointSchedule, log)
	if err != nil {
		return err
	}
	defer stopCheckpoints()

	rl, err := relay.New(db.Pool, relay.Config{
		BatchSize:    e.cfg.Relay.BatchSize,
		PollInterval: e.cfg.Relay.PollInterval,
		Partitions:   maint,
		Logger:       log,
		Registerer:   reg,
	})
	if err != nil {
		return err
	}
	// The relay outlives the request context so a signal lets it finish
	// its batch; Stop below ends it.
	if err := rl.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("starting relay: %w", err)
	}
	relayStopped := false
	stopRelay := func() {
		if relayStopped {
			return
		}
		relayStopped = true
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := rl.Stop(sctx); err != nil {
			log.Error("auditlog: stopping relay", "error", err)
		}
	}
	defer stopRelay()

	evh, err := events.New(db.Pool, events.Config{
		CSVFormulaGuard: e.cfg.Export.CSVFormulaGuard,
		Recorder:        rec,
		Logger:          log,
		Registerer:      reg,
	})
	if err != nil {
		return err
	}
	cph, err := checkpoints.New(db.Pool, cps.Signer(), log)
	if err != nil {
		return err
	}
	stopSweep := sweepInterruptedExports(ctx, db, rec, log)
	defer stopSweep()

	mods, err := modules.New(db.Pool, log, modules.Config{SlackSigningSecret: e.cfg.Slack.SigningSecret})
	if err != nil {
		return err
	}
	if err := mods.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("starting modules: %w", err)
	}
	defer mods.Stop()

	srv, err := api.New(api.Config{
		Addr:           e.cfg.HTTP.Addr,
		TrustedProxies: e.cfg.TrustedProxyPrefixes(),
		MaxBatch:       e.cfg.Ingest.MaxBatch,
		MaxBodyBytes:   e.cfg.Ingest.MaxBodyBytes,
	}, api.Deps{
		Pool:     db.Pool,
		Recorder: rec,
		Logger:   log,
		Registry: reg,
		Waker:    rl,
		V1:       []func(*gin.RouterGroup){evh.Register, cph.Register},
		Mount: []func(gin.IRouter){func(r gin.IRouter) {
			mods.Register(r.Group(""))
		}},
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("starting HTTP server on %s: %w", e.cfg.HTTP.Addr, err)
	}
	log.Info("auditlog: serving", "addr", srv.Addr())

	<-ctx.Done()
	grace := e.cfg.HTTP.ShutdownGrace
	log.Info("auditlog: shutting down", "shutdown_grace", grace.String())
	stopped := func(component string) { log.Info("auditlog: stopped", "component", component) }
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("auditlog: draining HTTP within shutdown_grace failed; cut the requests left", "error", err)
	}
	stopped("http")
	mods.Stop()
	stopped("modules")
	stopSweep()
	stopped("export_sweep")
	stopRelay()
	stopped("relay")
	stopMaint()
	stopped("partition_maintenance")
	stopCheckpoints()
	stopped("checkpoints")
	closeDB()
	stopped("database")
	log.Info("auditlog: shutdown complete")
	return nil
}

// exportSweepInterval is how often exports whose process or connection died
// before recording them are looked for (also once at start).
const exportSweepInterval = time.Minute

// sweepInterruptedExports records, at start and then every minute, the
// exports that began but could not record their audit_log.export event
// (events.SweepInterruptedExports). It returns a function that stops it
// and waits.
func sweepInterruptedExports(ctx context.Context, db *database, rec *outbox.Recorder, log *slog.Logger) func() {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(exportSweepInterval)
		defer t.Stop()
		for {
			n, err := events.SweepInterruptedExports(ctx, db.Pool, rec)
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("exports: sweeping interrupted exports", "error", err)
			case n > 0:
				log.Warn("exports: recorded exports interrupted before they could record themselves", "count", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}
