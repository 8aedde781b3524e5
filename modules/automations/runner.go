package automations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/modules/internal/option"
	"github.com/auditlog/auditlog/modules/internal/web"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/tickets"
	"github.com/auditlog/auditlog/outbox"
)

// RunnerOptions configure a Runner. Zero values take the defaults.
type RunnerOptions struct {
	// PollInterval is how long the runner waits before looking for due jobs
	// again when none was due (1ms–1h). Default: 1s.
	PollInterval time.Duration
	// AttemptTimeout bounds one attempt (1ms–1h). Default: 1m.
	AttemptTimeout time.Duration
	// Lease is how long a claimed job stays reserved for its worker; a job
	// still running after it is taken to be lost (crashed worker) and is
	// claimed again. Must exceed AttemptTimeout. Default: 5m.
	Lease time.Duration
	// BackoffBase is the wait before the second attempt; each later wait
	// doubles, up to BackoffMax (1ms–24h). Default: 10s.
	BackoffBase time.Duration
	// BackoffMax caps the wait between attempts (at least BackoffBase).
	// Default: 10m.
	BackoffMax time.Duration
	// AfterAction, when set, runs inside every attempt's transaction after
	// the action and its event and before the commit; an error fails the
	// attempt, rolling both back. It exists for fault injection in tests
	// and is nil in production.
	AfterAction func(ctx context.Context, job Job) error
}

// Defaults of RunnerOptions.
const (
	PollIntervalDefault   = time.Second
	AttemptTimeoutDefault = time.Minute
	LeaseDefault          = 5 * time.Minute
	BackoffBaseDefault    = 10 * time.Second
	BackoffMaxDefault     = 10 * time.Minute
)

func (o RunnerOptions) withDefaults() (RunnerOptions, error) {
	if err := option.Bounded(&o.PollInterval, PollIntervalDefault, time.Millisecond, time.Hour, "automations: PollInterval", "1ms-1h"); err != nil {
		return o, err
	}
	if err := option.Bounded(&o.AttemptTimeout, AttemptTimeoutDefault, time.Millisecond, time.Hour, "automations: AttemptTimeout", "1ms-1h"); err != nil {
		return o, err
	}
	if o.Lease == 0 {
		o.Lease = LeaseDefault
	}
	if o.Lease <= o.AttemptTimeout {
		return o, fmt.Errorf("automations: Lease (%s) must exceed AttemptTimeout (%s)", o.Lease, o.AttemptTimeout)
	}
	if err := option.Bounded(&o.BackoffBase, BackoffBaseDefault, time.Millisecond, 24*time.Hour, "automations: BackoffBase", "1ms-24h"); err != nil {
		return o, err
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = BackoffMaxDefault
	}
	if o.BackoffMax < o.BackoffBase {
		return o, fmt.Errorf("automations: BackoffMax (%s) must be at least BackoffBase (%s)", o.BackoffMax, o.BackoffBase)
	}
	return o, nil
}

// Job is one claimed attempt of an automation.
type Job struct {
	AutomationID uuid.UUID
	WorkspaceID  string
	Action       string
	TicketID     uuid.UUID
	CreatedBy    uuid.UUID
	// Attempt is this attempt's number, from 1.
	Attempt     int
	MaxAttempts int
	// AuditContext is what outbox.Capture produced when it was scheduled.
	AuditContext []byte
}

const (
	// claimJobSQL takes the next due job: pending and due, or running with
	// an expired lease (its worker died). SKIP LOCKED lets any number of
	// runners claim side by side, and skips jobs whose attempt is in
	// progress (the attempt holds the row lock).
	claimJobSQL = `
WITH due AS (
    SELECT automation_id FROM automation_jobs
    WHERE (state = 'pending' AND run_at <= now())
       OR (state = 'running' AND locked_until <= now())
    ORDER BY run_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE automation_jobs j
SET state = 'running', attempt = j.attempt + 1,
    locked_until = now() + $1 * interval '1 millisecond'
FROM due, automations a
WHERE j.automation_id = due.automation_id AND a.id = j.automation_id
RETURNING j.automation_id, j.workspace_id, j.audit_context, j.attempt, j.max_attempts,
          a.action, a.ticket_id, a.created_by`
	// lockJobSQL checks, at the start of an attempt's transaction, that the
	// claim is still this attempt's, and holds the row so nobody reclaims it
	// meanwhile.
	lockJobSQL = `
SELECT 1 FROM automation_jobs
WHERE automation_id = $1 AND attempt = $2 AND state = 'running'
FOR UPDATE`
	succeedJobSQL = `
UPDATE automation_jobs
SET state = 'succeeded', locked_until = NULL, last_error = NULL, finished_at = now()
WHERE automation_id = $1`
	failJobSQL = `
UPDATE automation_jobs
SET state = $3::text,
    run_at = CASE WHEN $3::text = 'pending' THEN now() + $4 * interval '1 millisecond' ELSE run_at END,
    locked_until = NULL,
    last_error = $5,
    finished_at = CASE WHEN $3::text = 'failed' THEN now() END
WHERE automation_id = $1 AND attempt = $2 AND state = 'running'
RETURNING run_at`
)

// Runner runs due automation jobs in a background goroutine.
type Runner struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	opts   RunnerOptions

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// NewRunner returns a stopped Runner over pool.
func NewRunner(pool *pgxpool.Pool, logger *slog.Logger, opts RunnerOptions) (*Runner, error) {
	if err := web.CheckDeps("automations", pool, logger); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Runner{pool: pool, logger: logger.With(slog.String("service", "automation_runner")), opts: opts}, nil
}

// Start runs the runner in a goroutine until Stop or until ctx ends.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done != nil {
		return errors.New("automations: runner already started")
	}
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	go r.loop(ctx, r.done)
	return nil
}

// Stop stops the runner and waits for the attempt in progress, if any, to
// finish. It is safe to call more than once, or without Start.
func (r *Runner) Stop() {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel, r.done = nil, nil
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

func (r *Runner) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	r.logger.InfoContext(ctx, "automation runner started", slog.Duration("poll_interval", r.opts.PollInterval))
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			r.logger.InfoContext(context.WithoutCancel(ctx), "automation runner stopped")
			return
		case <-timer.C:
		}
		if _, err := r.RunDue(ctx); err != nil && !errors.Is(err, context.Canceled) {
			r.logger.ErrorContext(ctx, "automation runner: running due jobs", slog.Any("error", err))
		}
		timer.Reset(r.opts.PollInterval)
	}
}

// RunDue claims and runs due jobs one at a time until none is due or ctx
// ends, and returns how many attempts it ran. An attempt in progress when
// ctx ends is finished, not abandoned.
func (r *Runner) RunDue(ctx context.Context) (int, error) {
	n := 0
	for ctx.Err() == nil {
		job, ok, err := r.claim(ctx)
		if err != nil {
			return n, err
		}
		if !ok {
			return n, nil
		}
		// Stopping the runner must not cut an attempt short.
		r.run(context.WithoutCancel(ctx), job)
		n++
	}
	return n, ctx.Err()
}

func (r *Runner) claim(ctx context.Context) (Job, bool, error) {
	var j Job
	var audit []byte
	err := r.pool.QueryRow(ctx, claimJobSQL, r.opts.Lease.Milliseconds()).Scan(
		&j.AutomationID, &j.WorkspaceID, &audit, &j.Attempt, &j.MaxAttempts,
		&j.Action, &j.TicketID, &j.CreatedBy)
	if errors.Is(err, pgx.ErrNoRows) {
		return Job{}, false, nil
	}
	if err != nil {
		return Job{}, false, fmt.Errorf("claiming automation job: %w", err)
	}
	j.AuditContext = audit
	return j, true, nil
}

// permanentError is a failure that retrying cannot fix; its message is safe
// to record in the audit event.
type permanentError struct{ reason string }

func (e *permanentError) Error() string { return e.reason }

// errLastAttemptLost fails a job whose last attempt's worker died: the
// claim after the lease expired counted an attempt that never ran.
var errLastAttemptLost = &permanentError{reason: "the last attempt was lost (its worker stopped or timed out)"}

// errLeaseLost means the job was reclaimed by another worker (this attempt
// outlived its lease); this worker must leave it alone.
var errLeaseLost = errors.New("automation job lease lost")

// auditContext restores the context captured when the job was scheduled and
// makes it the job's: source "workflow", the job's workspace, the original
// request id (to link the job to the request that scheduled it), and no
// client IP or user agent, which were the original request's, not the job's.
func auditContext(ctx context.Context, job Job) (context.Context, error) {
	actx, err := outbox.Restore(ctx, job.AuditContext)
	if err != nil {
		return nil, err
	}
	if a, ok := outbox.ActorFrom(actx); !ok || a.IsZero() {
		return nil, errors.New("the captured audit context names no actor")
	}
	orig, _ := outbox.RequestInfoFrom(actx)
	return outbox.WithRequestInfo(actx, outbox.RequestInfo{
		WorkspaceID: job.WorkspaceID,
		Source:      SourceWorkflow,
		RequestID:   orig.RequestID,
	}), nil
}

// run makes one attempt of job and settles it: succeeded, retry later, or
// failed for good, each with its event.
func (r *Runner) run(ctx context.Context, job Job) {
	log := r.logger.With(slog.String("automation_id", job.AutomationID.String()),
		slog.String("workspace_id", job.WorkspaceID), slog.Int("attempt", job.Attempt))
	actx, err := auditContext(ctx, job)
	if err != nil {
		// Without the member it acts for, the job must not act (nor record
		// an event under an invented actor).
		log.ErrorContext(ctx, "automation job has no usable audit context; failing it", slog.Any("error", err))
		r.settleWithoutEvent(ctx, log, job, err)
		return
	}
	if job.Attempt > job.MaxAttempts {
		// The last attempt's worker died mid-way; the lease expired and the
		// claim counted one more.
		r.fail(actx, log, job, errLastAttemptLost)
		return
	}
	attemptCtx, cancel := context.WithTimeout(actx, r.opts.AttemptTimeout)
	err = r.attempt(attemptCtx, job)
	cancel()
	switch {
	case err == nil:
		log.InfoContext(ctx, "automation job succeeded")
	case errors.Is(err, errLeaseLost):
		log.WarnContext(ctx, "automation job was reclaimed by another worker; attempt abandoned")
	default:
		r.fail(actx, log, job, err)
	}
}

// attempt performs the job's action, its event and the job's success in one
// transaction.
func (r *Runner) attempt(ctx context.Context, job Job) error {
	return outbox.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, lockJobSQL, job.AutomationID, job.Attempt).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return errLeaseLost
			}
			return fmt.Errorf("locking automation job: %w", err)
		}
		// The member acts through the automation, so they must still be
		// allowed to: removed or demoted members' automations fail.
		m, err := session.ByID(ctx, tx, job.WorkspaceID, job.CreatedBy)
		if errors.Is(err, session.ErrNotFound) {
			return &permanentError{reason: "the member who scheduled it is no longer a member"}
		}
		if err != nil {
			return err
		}
		if !m.Role.AtLeast(session.RoleAgent) {
			return &permanentError{reason: "the member who scheduled it may no longer close tickets"}
		}
		details := map[string]any{"automation_id": job.AutomationID.String(), "attempt": job.Attempt}
		switch job.Action {
		case ActionCloseTicket:
			_, changed, err := tickets.Close(ctx, tx, job.WorkspaceID, job.TicketID, details)
			if errors.Is(err, tickets.ErrNotFound) {
				return &permanentError{reason: "the ticket no longer exists"}
			}
			if err != nil {
				return err
			}
			if !changed {
				details["reason"] = "the ticket was already closed"
				if err := outbox.Record(ctx, tx, outbox.Event{
					WorkspaceID: job.WorkspaceID,
					Action:      ActionSkipped,
					Source:      SourceWorkflow,
					Resource:    automationResource(job.AutomationID, job.TicketID),
					Details:     details,
				}); err != nil {
					return err
				}
			}
		default:
			return &permanentError{reason: fmt.Sprintf("unknown action %q", job.Action)}
		}
		if r.opts.AfterAction != nil {
			if err := r.opts.AfterAction(ctx, job); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, succeedJobSQL, job.AutomationID); err != nil {
			return fmt.Errorf("marking automation job succeeded: %w", err)
		}
		return nil
	})
}

// backoff is the wait after the given failed attempt: BackoffBase doubled
// per earlier attempt, capped at BackoffMax.
func (r *Runner) backoff(attempt int) time.Duration {
	d := r.opts.BackoffBase
	for i := 1; i < attempt && d < r.opts.BackoffMax; i++ {
		d *= 2
	}
	return min(d, r.opts.BackoffMax)
}

// fail settles a failed attempt: the job goes back to pending after a
// backoff (automation.attempt_failed) or, when it was the last attempt or
// cannot succeed, fails for good (automation.failed). The event names the
// member the job acts for.
func (r *Runner) fail(ctx context.Context, log *slog.Logger, job Job, cause error) {
	var perm *permanentError
	final := errors.As(cause, &perm) || job.Attempt >= job.MaxAttempts
	reason := "the attempt failed"
	if perm != nil {
		reason = perm.reason
	}
	state, action := "pending", ActionAttemptFailed
	if final {
		state, action = "failed", ActionFailed
	}
	backoff := r.backoff(job.Attempt)
	// A fresh deadline: the attempt may have failed by running out of its own.
	ctx, cancel := context.WithTimeout(ctx, r.opts.AttemptTimeout)
	defer cancel()
	err := outbox.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var runAt time.Time
		err := tx.QueryRow(ctx, failJobSQL, job.AutomationID, job.Attempt, state,
			backoff.Milliseconds(), cause.Error()).Scan(&runAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return errLeaseLost
		}
		if err != nil {
			return fmt.Errorf("recording automation job failure: %w", err)
		}
		attempt := job.Attempt
		if errors.Is(cause, errLastAttemptLost) {
			attempt-- // report the attempt that was lost, not the claim that found it
		}
		details := map[string]any{
			"automation_id": job.AutomationID.String(),
			"attempt":       attempt,
			"max_attempts":  job.MaxAttempts,
			"reason":        reason,
		}
		if !final {
			details["next_attempt_at"] = outbox.FormatTime(runAt)
		}
		return outbox.Record(ctx, tx, outbox.Event{
			WorkspaceID: job.WorkspaceID,
			Action:      action,
			Source:      SourceWorkflow,
			Resource:    automationResource(job.AutomationID, job.TicketID),
			Details:     details,
		})
	})
	if err != nil {
		// The job stays claimed; once its lease expires it is claimed again.
		log.ErrorContext(ctx, "automation runner: settling failed attempt", slog.Any("cause", cause), slog.Any("error", err))
		return
	}
	if final {
		log.ErrorContext(ctx, "automation job failed", slog.Any("error", cause))
	} else {
		log.WarnContext(ctx, "automation attempt failed; will retry", slog.Any("error", cause), slog.Duration("backoff", backoff))
	}
}

// settleWithoutEvent fails a job that cannot name its actor, recording no
// event (an event needs an actor, and inventing one is not allowed).
func (r *Runner) settleWithoutEvent(ctx context.Context, log *slog.Logger, job Job, cause error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.AttemptTimeout)
	defer cancel()
	var runAt time.Time
	err := r.pool.QueryRow(ctx, failJobSQL, job.AutomationID, job.Attempt, "failed", int64(0), cause.Error()).Scan(&runAt)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		log.ErrorContext(ctx, "automation runner: failing job", slog.Any("error", err))
	}
}
