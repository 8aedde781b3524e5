package relay

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/outbox"
)

// errInjected fails a move on purpose.
var errInjected = errors.New("injected failure")

// openLateRow records one event in a transaction left open, so its pos is
// lower than every row recorded after it but it commits later. The
// returned function commits it.
func openLateRow(t *testing.T, r *Relay) (commit func()) {
	t.Helper()
	tx, err := r.pool.Begin(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(t.Context()) })
	require.NoError(t, outbox.Record(t.Context(), tx, event(-1)))
	return func() { require.NoError(t, tx.Commit(t.Context())) }
}

// claimedPositions returns the positions each committed move claimed, in
// order, as r's moves report them.
func claimedPositions(r *Relay) *[][]int64 {
	var moves [][]int64
	r.hooks.afterCommit = func(b moveResult) { moves = append(moves, b.claimed) }
	return &moves
}

// latePos is the pos of the late row: the first one recorded.
func latePos(t *testing.T, r *Relay) int64 {
	t.Helper()
	return queryInt(t, r.pool, `SELECT min(pos) FROM audit_outbox`)
}

// TestClaimCursorMovesLateRows: while a backlog drains, each claim starts
// past the previous full batch, so a row committed late under a lower pos
// is not in the next claims; the partial batch that ends the backlog sends
// the claim back to the head, and the late row is moved, once.
func TestClaimCursorMovesLateRows(t *testing.T) {
	pool := setup(t)
	r := newRelay(t, pool, Config{BatchSize: 10})
	moves := claimedPositions(r)
	commitLate := openLateRow(t, r)
	record(t, pool, events(35))

	for range 2 {
		n, err := r.MoveOnce(t.Context())
		require.NoError(t, err)
		require.Equal(t, 10, n)
	}
	commitLate()
	late := latePos(t, r)
	require.Equal(t, 36, 20+moveAll(t, r, pool))
	total, ids, seqs := eventCounts(t, pool)
	require.Equal(t, []int64{36, 36, 36}, []int64{total, ids, seqs}, "every event stored once")
	require.Len(t, *moves, 5, "10, 10, 10 past the cursor, 5 (partial), then the late row from the head")
	require.NotContains(t, (*moves)[2], late, "the third claim started past the second batch")
	require.Len(t, (*moves)[3], 5)
	require.Equal(t, []int64{late}, (*moves)[4])
	for i := 1; i < 4; i++ {
		require.Greater(t, (*moves)[i][0], (*moves)[i-1][len((*moves)[i-1])-1], "move %d claimed past the previous one", i)
	}
}

// TestClaimCursorRescansDuringEndlessBacklog: a backlog that outlasts
// rescanEvery full batches still claims from the head every rescanEvery
// moves, so a late row waits a bounded number of batches.
func TestClaimCursorRescansDuringEndlessBacklog(t *testing.T) {
	pool := setup(t)
	r := newRelay(t, pool, Config{BatchSize: 1})
	moves := claimedPositions(r)
	commitLate := openLateRow(t, r)
	record(t, pool, events(3*rescanEvery))

	n, err := r.MoveOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	commitLate()
	late := latePos(t, r)
	moveAll(t, r, pool)

	at := -1
	for i, m := range *moves {
		if m[0] == late {
			at = i
		}
	}
	require.Positive(t, at, "the late row was moved")
	require.LessOrEqual(t, at, rescanEvery, "the late row waited at most rescanEvery moves")
	require.Less(t, at, 3*rescanEvery-1, "it was moved before the backlog ran out")
	total, ids, _ := eventCounts(t, pool)
	require.Equal(t, int64(3*rescanEvery+1), total)
	require.Equal(t, total, ids)
}

// TestClaimCursorResetsAfterFailure: a failed move sends the next claim
// back to the head, so rows a failed batch released are not left behind
// the cursor.
func TestClaimCursorResetsAfterFailure(t *testing.T) {
	pool := setup(t)
	r := newRelay(t, pool, Config{BatchSize: 5})
	record(t, pool, events(20))
	n, err := r.MoveOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.NotZero(t, r.claimFrom.Load())

	fail := true
	r.hooks.beforeCommit = func(_ context.Context, _ pgx.Tx, _ moveResult) error {
		if fail {
			fail = false
			return errInjected
		}
		return nil
	}
	_, err = r.MoveOnce(t.Context())
	require.ErrorIs(t, err, errInjected)
	require.Zero(t, r.claimFrom.Load(), "a failed move claims from the head next")
	require.Equal(t, 20, 5+moveAll(t, r, pool))
}

// TestDrainMovesLateRows: Drain ends only when a move from the head finds
// nothing, so a row committed late under a lower pos while the cursor was
// past it is moved too.
func TestDrainMovesLateRows(t *testing.T) {
	pool := setup(t)
	r := newRelay(t, pool, Config{BatchSize: 2})
	commitLate := openLateRow(t, r)
	record(t, pool, events(4))
	n, err := r.MoveOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.NotZero(t, r.claimFrom.Load())
	commitLate()

	n, err = r.Drain(t.Context())
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Zero(t, outboxDepth(t, pool))
}
