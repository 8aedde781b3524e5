package partitions

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"

	"github.com/auditlog/auditlog/app/config"
	"github.com/auditlog/auditlog/app/schedule"
)

// Start runs RunOnce now and then on the cron schedule spec (five fields,
// minute first, in UTC, or a descriptor such as "@every 1h"; the parser is
// config.ScheduleParser). Runs never overlap within this Maintainer, and
// the advisory lock keeps instances from overlapping. A failed run is
// logged and counted, never fatal: the next one tries again. Runs use a
// context derived from ctx; Stop ends the schedule.
func (m *Maintainer) Start(ctx context.Context, spec string) error {
	sched, err := config.ScheduleParser.Parse(spec)
	if err != nil {
		return fmt.Errorf("partitions: parsing schedule %q: %w", spec, err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cron != nil {
		return errors.New("partitions: scheduler already started")
	}

	runCtx, cancel := context.WithCancel(ctx)
	c, chain, cronStopped := schedule.New(m.logger, "partitions")
	job := chain.Then(cron.FuncJob(func() { m.scheduledRun(runCtx, sched, m.now()) }))
	first := chain.Then(cron.FuncJob(func() { m.runAndLog(runCtx) }))
	c.Schedule(sched, job)
	c.Start()
	m.cron, m.cancel, m.cronStopped = c, cancel, cronStopped

	// First run now rather than an interval from now, so a fresh install
	// has its partitions before the first event arrives. It runs whatever
	// other instances did: it is what makes this instance's start safe.
	m.runs.Go(first.Run)

	m.logger.InfoContext(ctx, "partitions: maintenance scheduled", "schedule", spec, "interval", m.interval,
		"retention_days", m.retention, "premake", m.premake)
	return nil
}

// Stop ends the schedule and waits for a run in progress to finish; when
// ctx ends first, the run is cancelled (its transaction rolls back, leaving
// the partitions as they were) and Stop waits only for it to unwind. Stop
// without Start does nothing.
func (m *Maintainer) Stop(ctx context.Context) {
	m.mu.Lock()
	c, cancel, cronStopped := m.cron, m.cancel, m.cronStopped
	m.cron, m.cancel, m.cronStopped = nil, nil, nil
	m.mu.Unlock()
	if c == nil {
		return
	}

	done := make(chan struct{})
	go func() {
		<-c.Stop().Done()
		<-cronStopped // cron's loop has logged its last line and returned
		m.runs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		m.logger.WarnContext(ctx, "partitions: cancelling maintenance run at shutdown")
		cancel()
		<-done
	}
	cancel()
}

// claimSlotSQL records a scheduled run in auditlog_settings unless one was
// recorded after $2: the row lock of the upsert makes the check and the
// claim atomic across instances.
const claimSlotSQL = `
INSERT INTO auditlog_settings AS s (name, value)
VALUES ('partitions.last_scheduled_run', convert_to($1::timestamptz::text, 'UTF8'))
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
WHERE convert_from(s.value, 'UTF8')::timestamptz < $2::timestamptz
RETURNING true`

// scheduledRun is one scheduled maintenance run at tick time now. Every
// instance has the same schedule, but their cron clocks differ (@every
// counts from each process's start), so the advisory lock alone only stops
// runs overlapping. To run once per scheduled period across instances, a
// tick runs only when no instance recorded a run within half a period
// before it. It reports whether it ran.
func (m *Maintainer) scheduledRun(ctx context.Context, sched cron.Schedule, now time.Time) bool {
	gap := sched.Next(now).Sub(now) / 2
	var claimed bool
	err := m.pool.QueryRow(ctx, claimSlotSQL, now, now.Add(-gap)).Scan(&claimed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		m.metrics.skipped.Inc()
		m.logger.DebugContext(ctx, "partitions: another instance ran this period's maintenance; skipped")
		return false
	case err != nil:
		// Better twice than never: the run itself is idempotent.
		m.logger.WarnContext(ctx, "partitions: recording the scheduled run failed; running anyway", "error", err)
	}
	m.runAndLog(ctx)
	return true
}

// runAndLog runs RunOnce and logs its failure.
func (m *Maintainer) runAndLog(ctx context.Context) {
	// A skipped run (another instance holds the lock) was logged by begin.
	_, err := m.RunOnce(ctx)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		m.logger.DebugContext(ctx, "partitions: maintenance run cancelled", "error", err)
	default:
		m.logger.ErrorContext(ctx, "partitions: maintenance run failed", "error", err)
	}
}
