package relay

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestClaimUnderOpenSnapshot drains a backlog while another session holds
// a snapshot open (a long export does), once claiming every batch from the
// head of the outbox and once from the claim cursor, and prints how the
// moves slow down and what the last claim reads: what PERFORMANCE.md's
// "claiming scans dead outbox rows" quotes. It measures rather than
// checks, so it runs only when asked:
//
//	AUDITLOG_CLAIM_PROBE=1 go test -count=1 -run TestClaimUnderOpenSnapshot -v ./outbox/relay/
func TestClaimUnderOpenSnapshot(t *testing.T) {
	if os.Getenv("AUDITLOG_CLAIM_PROBE") == "" {
		t.Skip("set AUDITLOG_CLAIM_PROBE=1 to measure claims under an open snapshot")
	}
	const n = 40_000
	for _, fromHead := range []bool{true, false} {
		pool := setup(t)
		ctx := t.Context()
		es := shapedEvents(n)
		for i := 0; i < n; i += 1000 {
			record(t, pool, es[i:i+1000])
		}
		// The snapshot holder: dead outbox rows stay visible to it, so no
		// index scan may mark their entries dead.
		holder, err := pool.Begin(ctx)
		require.NoError(t, err)
		_, err = holder.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`)
		require.NoError(t, err)
		var seen int64
		require.NoError(t, holder.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&seen))

		r, err := New(pool, Config{Logger: testLogger(t)})
		require.NoError(t, err)
		var moves []time.Duration
		for {
			if fromHead {
				r.claimFrom.Store(0)
			}
			start := time.Now()
			moved, err := r.MoveOnce(ctx)
			require.NoError(t, err)
			if moved == 0 {
				break
			}
			moves = append(moves, time.Since(start))
		}
		require.Len(t, moves, n/1000)
		avg := func(ds []time.Duration) time.Duration {
			var sum time.Duration
			for _, d := range ds {
				sum += d
			}
			return sum / time.Duration(len(ds))
		}
		total := avg(moves) * time.Duration(len(moves))
		t.Logf("from head %v: %d moves in %v; first 5 moves %v each, last 5 %v each",
			fromHead, len(moves), total.Round(time.Millisecond), avg(moves[:5]).Round(100*time.Microsecond),
			avg(moves[len(moves)-5:]).Round(100*time.Microsecond))

		// What one more claim reads now, from the head and past the last pos.
		record(t, pool, es[:1000])
		var last int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT min(pos) - 1 FROM audit_outbox`).Scan(&last))
		for _, from := range []int64{0, last} {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) `+claimHeadRowsSQL, 1000, from)
				if err != nil {
					return err
				}
				plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					return err
				}
				t.Logf("claim from pos %d:", from)
				for _, line := range plan {
					t.Logf("  %s", line)
				}
				return errRollback
			})
			require.ErrorIs(t, err, errRollback)
		}
		require.NoError(t, holder.Rollback(ctx))
	}
}

// errRollback rolls a probe's transaction back.
var errRollback = errors.New("rolled back on purpose")
