package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// TestKillMidBatch: the service is killed with SIGKILL while clients post
// batches and the relay moves them. After a restart every batch that got a
// 202 is stored, every batch that got no answer is stored whole or not at
// all, and once the clients resend the unanswered batches (as a real client
// does; they carry their ids) every event is stored exactly once with a
// unique seq. Two kill rounds.
func TestKillMidBatch(t *testing.T) {
	t.Parallel()
	const (
		workspace = "ws_kill"
		action    = "e2e.kill"
		rounds    = 2
		// perRound: accepted events before the kill; enough that the relay
		// is busy (batches of 200) while ingest runs.
		perRound = 4000
	)
	dbURL := testdb.NewURL(t)
	pool := openPool(t, dbURL, 3)
	key := createKey(t, pool, workspace)
	svc := startService(t, "auditlog", dbURL, map[string]string{"AUDITLOG_RELAY_BATCH_SIZE": "200"})
	c := newClient(t, key)
	ctx := context.Background()

	var all []batch
	for round := 1; round <= rounds; round++ {
		before := countStore(t, pool, workspace).Rows
		run := startIngest(c, ingestOptions{
			Targets: []string{svc.URL("")}, Workers: 6, BatchSize: 100, Action: action, StopOnError: true,
		})
		waitFor(t, "events flowing through ingest and the relay", time.Minute, func() (bool, error) {
			stored := countStore(t, pool, workspace).Rows
			return acceptedEvents(run.Attempts()) >= perRound*round && stored > before, nil
		})
		inFlight := run.InFlight()
		depth, err := outboxDepth(ctx, pool)
		require.NoError(t, err)
		svc.Kill()
		attempts := run.Stop()
		accepted, unanswered := split(attempts)
		for _, a := range unanswered {
			// Before the kill every request must have been accepted; the
			// ones cut by the kill have no HTTP answer at all.
			require.Zero(t, a.Status, "round %d: a request was answered without 202: %s", round, a)
		}
		t.Logf("round %d: killed with %d requests in flight, outbox depth %d; %d batches accepted, %d unanswered",
			round, inFlight, depth, len(accepted), len(unanswered))

		svc.Start()
		svc.WaitReady(readyTimeout)
		waitDrained(t, pool, drainTimeout)

		// Every 202 was durable before anything was resent.
		var acceptedIDs []string
		for _, a := range accepted {
			acceptedIDs = append(acceptedIDs, a.Batch.IDs()...)
		}
		require.Equal(t, len(acceptedIDs), storedOf(t, pool, acceptedIDs), "round %d: accepted events stored after the kill", round)
		// An unanswered batch is all or nothing.
		per := storedPerBatch(t, pool, workspace, action)
		committed := 0
		for _, a := range unanswered {
			n := per[a.Batch.ID]
			require.True(t, n == 0 || n == len(a.Batch.Events), "round %d: batch %s half-written: %d of %d", round, a.Batch.ID, n, len(a.Batch.Events))
			if n > 0 {
				committed++
			}
		}
		t.Logf("round %d: %d of %d unanswered batches had committed before the kill", round, committed, len(unanswered))

		for _, a := range unanswered {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			ans := c.post(rctx, svc.URL(""), a.Batch)
			cancel()
			require.True(t, ans.accepted(), "resending batch %s: %s", a.Batch.ID, ans)
		}
		for _, a := range attempts {
			all = append(all, a.Batch)
		}
		waitDrained(t, pool, drainTimeout)
		requireExactlyOnce(t, pool, workspace, action, all)
	}
	c.http.CloseIdleConnections()
	require.NoError(t, svc.Stop(), "graceful stop after the kills")
}
