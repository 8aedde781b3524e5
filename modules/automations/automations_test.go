package automations_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/modules/automations"
	"github.com/auditlog/auditlog/modules/internal/apptest"
	"github.com/auditlog/auditlog/modules/session"
	"github.com/auditlog/auditlog/modules/tickets"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ws = "ws_acme"

type bundle struct {
	env    *apptest.Env
	alice  apptest.Member
	ticket string
}

// setup makes a workspace with an agent, Alice, and one open ticket.
func setup(t *testing.T) bundle {
	t.Helper()
	env := apptest.New(t)
	alice := env.NewMember(ws, "alice@acme.io", "Alice Liddell", session.RoleAgent, "")
	ticket := env.NewTicket(alice.Token, "Printer on fire")
	env.ResetOutbox()
	return bundle{env: env, alice: alice, ticket: ticket}
}

// schedule asks, as Alice, to close the ticket after delay seconds.
func (b bundle) schedule(t *testing.T, delay int) string {
	t.Helper()
	w := b.env.Do(http.MethodPost, "/app/automations", b.alice.Token,
		map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": delay},
		apptest.HeaderRequestID, "req_schedule")
	apptest.RequireStatus(t, w, http.StatusCreated)
	return apptest.JSON(t, w)["id"].(string)
}

func (b bundle) jobState(t *testing.T, id string) (state string, attempt int) {
	t.Helper()
	require.NoError(t, b.env.Pool.QueryRow(context.Background(),
		`SELECT state, attempt FROM automation_jobs WHERE automation_id = $1`, id).Scan(&state, &attempt))
	return state, attempt
}

// runner returns a fast runner over pool whose attempts fail when fail
// says so.
func (b bundle) runner(t *testing.T, pool *pgxpool.Pool, fail func(automations.Job) bool) *automations.Runner {
	t.Helper()
	return b.runnerWithBackoff(t, pool, time.Millisecond, fail)
}

func (b bundle) runnerWithBackoff(t *testing.T, pool *pgxpool.Pool, backoff time.Duration, fail func(automations.Job) bool) *automations.Runner {
	t.Helper()
	r, err := automations.NewRunner(pool, b.env.Logger, automations.RunnerOptions{
		PollInterval: 5 * time.Millisecond,
		BackoffBase:  backoff,
		BackoffMax:   backoff,
		AfterAction: func(_ context.Context, job automations.Job) error {
			if fail != nil && fail(job) {
				return fmt.Errorf("injected failure of attempt %d", job.Attempt)
			}
			return nil
		},
	})
	require.NoError(t, err)
	return r
}

// runUntil calls RunDue until cond holds (retries become due after their
// backoff), failing after a deadline.
func runUntil(t *testing.T, r *automations.Runner, cond func() bool, msg string) {
	t.Helper()
	apptest.Eventually(t, func() bool {
		_, err := r.RunDue(context.Background())
		require.NoError(t, err)
		return cond()
	}, msg)
}

// runUntilState runs r until job id is in state.
func (b bundle) runUntilState(t *testing.T, r *automations.Runner, id, state string) {
	t.Helper()
	runUntil(t, r, func() bool {
		s, _ := b.jobState(t, id)
		return s == state
	}, "the job "+state)
}

// requireActsForAlice checks an event recorded by the job: Alice as actor,
// source workflow, no IP or user agent, the scheduling request's id, and
// the attempt and automation in details.
func requireActsForAlice(t *testing.T, b bundle, ev apptest.Event, id string, attempt int) {
	t.Helper()
	require.Equal(t, b.alice.Actor(), ev.Actor, "the job acts for the member who scheduled it")
	require.Equal(t, ws, ev.WorkspaceID)
	require.Equal(t, automations.SourceWorkflow, ev.Source)
	require.Empty(t, ev.IP)
	require.Empty(t, ev.UserAgent)
	require.Equal(t, "req_schedule", ev.RequestID)
	require.Equal(t, id, ev.DetailsMap["automation_id"])
	require.EqualValues(t, attempt, ev.DetailsMap["attempt"])
}

func TestScheduleCommitsAutomationJobAndEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)

	w := b.env.Do(http.MethodPost, "/app/automations", b.alice.Token,
		map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 3600})
	apptest.RequireStatus(t, w, http.StatusCreated)
	created := apptest.JSON(t, w)
	id := created["id"].(string)
	require.Equal(t, 1, b.env.Count(`SELECT count(*) FROM automations WHERE id = $1 AND created_by = $2`, id, b.alice.ID))
	var auditContext string
	require.NoError(t, b.env.Pool.QueryRow(context.Background(),
		`SELECT audit_context::text FROM automation_jobs WHERE automation_id = $1 AND state = 'pending'
		   AND run_at > now() + interval '59 minutes'`, id).Scan(&auditContext))
	require.Contains(t, auditContext, b.alice.ID, "the job keeps who scheduled it")

	ev := b.env.OneEvent(automations.ActionCreate)
	require.Equal(t, b.alice.Actor(), ev.Actor)
	require.Equal(t, "web", ev.Source)
	require.Equal(t, apptest.IP, ev.IP)
	require.Equal(t, fmt.Sprintf("automation=%s;ticket=%s", id, b.ticket), ev.ResourceIDsFlat)
	require.EqualValues(t, 3600, ev.DetailsMap["delay_seconds"])

	w = b.env.Do(http.MethodGet, "/app/automations/"+id, b.alice.Token, nil)
	apptest.RequireStatus(t, w, http.StatusOK)
	got := apptest.JSON(t, w)
	require.Equal(t, "pending", got["state"])
	require.Equal(t, got, created, "POST answers the automation as GET reads it")
	require.Equal(t, map[string]any{
		"id": id, "workspace_id": ws, "action": "close_ticket", "ticket_id": b.ticket, "created_by": b.alice.ID,
		"delay_seconds": float64(3600), "created_at": got["created_at"], "state": "pending", "run_at": got["run_at"],
		"attempt": float64(0), "max_attempts": float64(5), "finished_at": nil,
	}, got)

	// Not due yet: the runner leaves it alone.
	n, err := b.runner(t, b.env.Pool, nil).RunDue(context.Background())
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestScheduleRollsBackWhenEventFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.env.FailOutbox(automations.ActionCreate)

	w := b.env.Do(http.MethodPost, "/app/automations", b.alice.Token,
		map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 0})
	apptest.RequireError(t, w, http.StatusInternalServerError, "")
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM automations`))
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM automation_jobs`))
	require.Equal(t, 0, b.env.OutboxCount(automations.ActionCreate))
}

// TestRetriedJobNamesOriginalUser: attempts 1 and 2 fail after closing the
// ticket (rolled back with their event), attempt 3 succeeds; attempt 2 and 3
// run on a new runner with its own pool, as after a restart. Every event
// names Alice with its attempt number.
func TestRetriedJobNamesOriginalUser(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	failing := func(job automations.Job) bool { return job.Attempt < 3 }

	// A long backoff keeps the first runner from retrying at once.
	first := b.runnerWithBackoff(t, b.env.Pool, time.Hour, failing)
	runUntil(t, first, func() bool { return b.env.OutboxCount(automations.ActionAttemptFailed) == 1 }, "attempt 1 failed")
	require.Equal(t, "open", b.env.TicketStatus(b.ticket), "the failed attempt's close rolled back")
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionClose), "and so did its event")
	state, attempt := b.jobState(t, id)
	require.Equal(t, "pending", state)
	require.Equal(t, 1, attempt)
	n, err := first.RunDue(context.Background())
	require.NoError(t, err)
	require.Zero(t, n, "the retry waits for its backoff")
	// The hour passes.
	_, err = b.env.Pool.Exec(context.Background(), `UPDATE automation_jobs SET run_at = now()`)
	require.NoError(t, err)

	// "Restart": a new pool and runner, knowing nothing but the job row.
	pool, err := pgxpool.NewWithConfig(context.Background(), b.env.Pool.Config().Copy())
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	second := b.runner(t, pool, failing)
	b.runUntilState(t, second, id, "succeeded")

	require.Equal(t, "closed", b.env.TicketStatus(b.ticket))
	fails := b.env.Events(automations.ActionAttemptFailed)
	require.Len(t, fails, 2)
	for i, ev := range fails {
		requireActsForAlice(t, b, ev, id, i+1)
		require.EqualValues(t, 5, ev.DetailsMap["max_attempts"])
		require.NotEmpty(t, ev.DetailsMap["next_attempt_at"])
		require.Equal(t, fmt.Sprintf("automation=%s;ticket=%s", id, b.ticket), ev.ResourceIDsFlat)
	}
	closed := b.env.OneEvent(tickets.ActionClose)
	requireActsForAlice(t, b, closed, id, 3)
	require.Equal(t, "ticket="+b.ticket, closed.ResourceIDsFlat)
	require.Equal(t, map[string]any{"status": map[string]any{"from": "open", "to": "closed"}}, closed.DetailsMap["changes"])
	_, attempt = b.jobState(t, id)
	require.Equal(t, 3, attempt)
	require.Zero(t, b.env.Count(`SELECT count(*) FROM audit_outbox WHERE actor_type <> 'user'`), "never an anonymous actor")
}

func TestJobFailsForGoodAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	_, err := b.env.Pool.Exec(context.Background(), `UPDATE automation_jobs SET max_attempts = 2`)
	require.NoError(t, err)

	r := b.runner(t, b.env.Pool, func(automations.Job) bool { return true })
	b.runUntilState(t, r, id, "failed")

	require.Equal(t, "open", b.env.TicketStatus(b.ticket))
	require.Equal(t, 0, b.env.OutboxCount(tickets.ActionClose))
	requireActsForAlice(t, b, b.env.OneEvent(automations.ActionAttemptFailed), id, 1)
	final := b.env.OneEvent(automations.ActionFailed)
	requireActsForAlice(t, b, final, id, 2)
	require.Nil(t, final.DetailsMap["next_attempt_at"])

	// A failed job is never claimed again.
	n, err := r.RunDue(context.Background())
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestLostAttemptIsRetried: a worker claims the job and dies; once the lease
// expires another runner claims it again and succeeds, as attempt 2.
func TestLostAttemptIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	// What a claim by a worker that then crashed leaves behind.
	_, err := b.env.Pool.Exec(context.Background(), `
UPDATE automation_jobs SET state = 'running', attempt = attempt + 1, locked_until = now() + interval '1 hour'`)
	require.NoError(t, err)

	r := b.runner(t, b.env.Pool, nil)
	n, err := r.RunDue(context.Background())
	require.NoError(t, err)
	require.Zero(t, n, "the lease still holds")
	// The lease runs out.
	_, err = b.env.Pool.Exec(context.Background(), `UPDATE automation_jobs SET locked_until = now()`)
	require.NoError(t, err)
	b.runUntilState(t, r, id, "succeeded")
	requireActsForAlice(t, b, b.env.OneEvent(tickets.ActionClose), id, 2)
}

func TestJobOfRemovedMemberFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	_, err := b.env.Pool.Exec(context.Background(), `DELETE FROM members WHERE id = $1`, b.alice.ID)
	require.NoError(t, err)

	r := b.runner(t, b.env.Pool, nil)
	b.runUntilState(t, r, id, "failed")
	require.Equal(t, "open", b.env.TicketStatus(b.ticket))
	ev := b.env.OneEvent(automations.ActionFailed)
	requireActsForAlice(t, b, ev, id, 1)
	require.Equal(t, "the member who scheduled it is no longer a member", ev.DetailsMap["reason"])
}

func TestAlreadyClosedTicketIsSkipped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	apptest.RequireStatus(t, b.env.Do(http.MethodPost, "/app/tickets/"+b.ticket+"/close", b.alice.Token, nil), http.StatusOK)

	r := b.runner(t, b.env.Pool, nil)
	b.runUntilState(t, r, id, "succeeded")
	requireActsForAlice(t, b, b.env.OneEvent(automations.ActionSkipped), id, 1)
	require.Equal(t, 1, b.env.OutboxCount(tickets.ActionClose), "only the member's own close")
}

func TestRunnerStartStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)

	var attempts atomic.Int32
	r := b.runner(t, b.env.Pool, func(automations.Job) bool { attempts.Add(1); return false })
	require.NoError(t, r.Start(context.Background()))
	require.Error(t, r.Start(context.Background()), "a second Start is refused")
	apptest.Eventually(t, func() bool {
		s, _ := b.jobState(t, id)
		return s == "succeeded"
	}, "the running runner picked the job up")
	r.Stop()
	r.Stop()
	require.EqualValues(t, 1, attempts.Load())
	requireActsForAlice(t, b, b.env.OneEvent(tickets.ActionClose), id, 1)
}

func TestScheduleBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	eve := b.env.NewMember("ws_other", "eve@other.io", "Eve", session.RoleOwner, "")
	viewer := b.env.NewMember(ws, "vic@acme.io", "Vic", session.RoleViewer, "")
	b.env.ResetOutbox()

	cases := []struct {
		token string
		body  any
		code  int
		field string
	}{
		{b.alice.Token, map[string]any{"action": "delete_ticket", "ticket_id": b.ticket, "delay_seconds": 1}, 400, "action"},
		{b.alice.Token, map[string]any{"action": "close_ticket", "ticket_id": "t_1", "delay_seconds": 1}, 400, "ticket_id"},
		{b.alice.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket}, 400, "delay_seconds"},
		{b.alice.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": -1}, 400, "delay_seconds"},
		{b.alice.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 1e12}, 400, "delay_seconds"},
		{b.alice.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 1.5}, 400, "delay_seconds"},
		{eve.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 1}, 400, "ticket_id"},
		{viewer.Token, map[string]any{"action": "close_ticket", "ticket_id": b.ticket, "delay_seconds": 1}, 403, ""},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			apptest.RequireError(t, b.env.Do(http.MethodPost, "/app/automations", tc.token, tc.body), tc.code, tc.field)
		})
	}
	apptest.RequireError(t, b.env.Do(http.MethodGet, "/app/automations/00000000-0000-0000-0000-000000000000", b.alice.Token, nil), 404, "")
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM automations`))
	require.Equal(t, 0, b.env.Count(`SELECT count(*) FROM audit_outbox`))
}

func TestRunnerOptionsValidated(t *testing.T) {
	t.Parallel()
	_, err := automations.NewRunner(nil, nil, automations.RunnerOptions{})
	require.ErrorContains(t, err, "pool")
	b := setup(t)
	_, err = automations.NewRunner(b.env.Pool, b.env.Logger, automations.RunnerOptions{AttemptTimeout: time.Hour, Lease: time.Minute})
	require.ErrorContains(t, err, "Lease")
	_, err = automations.NewRunner(b.env.Pool, b.env.Logger, automations.RunnerOptions{BackoffBase: time.Minute, BackoffMax: time.Second})
	require.ErrorContains(t, err, "BackoffMax")
}

// TestTimedOutAttemptIsRetried: an attempt that outlives AttemptTimeout is
// rolled back, its failure still recorded, and the next attempt succeeds.
func TestTimedOutAttemptIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	// Generous, so that attempt 2 finishes in time on a loaded machine.
	r, err := automations.NewRunner(b.env.Pool, b.env.Logger, automations.RunnerOptions{
		AttemptTimeout: time.Second,
		BackoffBase:    time.Millisecond,
		AfterAction: func(ctx context.Context, job automations.Job) error {
			if job.Attempt == 1 {
				<-ctx.Done() // hangs until the attempt's deadline
				return ctx.Err()
			}
			return nil
		},
	})
	require.NoError(t, err)
	b.runUntilState(t, r, id, "succeeded")
	requireActsForAlice(t, b, b.env.OneEvent(automations.ActionAttemptFailed), id, 1)
	requireActsForAlice(t, b, b.env.OneEvent(tickets.ActionClose), id, 2)
}

// TestLostLastAttemptFailsJob: the worker of the last allowed attempt dies;
// the job fails for good, naming that attempt, and the ticket is untouched.
func TestLostLastAttemptFailsJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.schedule(t, 0)
	_, err := b.env.Pool.Exec(context.Background(), `
UPDATE automation_jobs SET max_attempts = 1, state = 'running', attempt = 1, locked_until = now()`)
	require.NoError(t, err)

	r := b.runner(t, b.env.Pool, nil)
	b.runUntilState(t, r, id, "failed")
	require.Equal(t, "open", b.env.TicketStatus(b.ticket))
	ev := b.env.OneEvent(automations.ActionFailed)
	requireActsForAlice(t, b, ev, id, 1)
	require.Contains(t, ev.DetailsMap["reason"], "lost")
}
