package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// conflictPause is how long a relay moves one batch at a time after a move
// it launched ahead was rolled back (yield): relays competing for one
// outbox would otherwise roll back most of the moves they launch ahead,
// each a copy's worth of dead rows and WAL.
const conflictPause = 10 * time.Second

// yielding reports whether a move launched ahead was rolled back recently
// enough (conflictPause) to move one batch at a time.
func (r *Relay) yielding() bool {
	return time.Now().UnixNano() < r.pauseUntil.Load()
}

// secondConnWait bounds how long a pipeline waits for its second
// connection; without one, its moves go one at a time. A connection the pool
// goes on making after the wait is taken for a later move.
const secondConnWait = 20 * time.Millisecond

// stallAfter is how long a pipeline waits for the older move's copy before
// it rolls the newer move back. The newer move cannot end before the older
// lands, so if the older's copy waits for a row lock the newer holds,
// directly (a resend whose two rows fall in the two batches, the newer
// copied first) or through another relay's move (which holds a resend of
// one of the older's events and waits on one of the newer's), the relays
// would wait for each other in a cycle PostgreSQL cannot see: the newer
// backend is idle. A batch of the default size copies in well under this;
// stallLimit allows large batches longer.
const stallAfter = time.Second

// stallLimit is how long to wait for a copy before calling it stalled:
// stallAfter, or three times the last copy's duration when batches are
// large enough to copy for longer, so that a slow but moving copy does not
// cost the move launched after it.
func stallLimit(lastCopy time.Duration) time.Duration {
	return max(stallAfter, 3*lastCopy)
}

// pipelineResult is what one pipeline did.
type pipelineResult struct {
	moved int
	// lastClaimed is how many rows the last move launched claimed, and
	// lastFromHead whether it claimed from the head of the outbox.
	lastClaimed  int
	lastFromHead bool
	// again: rows were left in the outbox for the next move to take at
	// once (a move rolled back for a conflict or a stall), whatever the
	// last move claimed.
	again bool
}

// pipeline moves batches from the head of the outbox until one claims less
// than a full batch, stop is closed or a move fails.
//
// While batches come full it keeps two moves in flight, on two connections:
// the next batch is claimed, numbered, linked and copied while the previous
// one is still being copied, finished and committed, so the server works on
// two copies at once and a commit's WAL flush overlaps the next copy. The
// next move goes on from where the previous one will end (its chainState):
// seq numbers and chain heads that are only right if no other move commits
// in between. It takes the counter lock only in its finish, after the
// previous move has committed, without waiting (NOWAIT), and checks the
// counter stands where the previous move left it; if another relay's move
// holds it or came in between, it rolls back (errSpeculation) and its rows
// go to the next move, which starts from the database under the lock. So
// seq stays strictly increasing in commit order, and every chain link is to
// the event committed before it. After such a conflict the relay moves one
// batch at a time for conflictPause.
//
// A move never waits for the one after it: a move launched ahead waits for
// no lock longer than a second (followingSettingsSQL), the first move of a
// pipeline holds every lock its finish needs, and if the older move's copy
// has not returned after stallLimit and waits for a lock, the newer move is
// rolled back (see stallAfter). Either way the newer move gave way
// (errGaveWay) and the relay moves one batch at a time for conflictPause.
// When a move fails, the move after it is rolled back, and once the
// pipeline's connections are back in the pool the failed one is dealt with
// as a single move's failure (redo). On stop, the oldest move in flight
// commits and the one after it is rolled back.
func (r *Relay) pipeline(ctx context.Context, stop <-chan struct{}) (pipelineResult, error) {
	p, failed, cause, err := r.fly(ctx, stop)
	if failed != nil {
		p.again = p.again || rowsLeft(cause)
		n, rerr := r.redo(ctx, failed.res.claimed, cause)
		p.moved += n
		r.observeBatch(failed.start)
		err = errors.Join(err, rerr)
	}
	r.countFailure(ctx, err)
	return p, err
}

// fly runs the pipeline's moves on connections of its own, up to the first
// failure: failed is a move that failed with cause once launched, nil if
// none did; err is any other failure (a launch, a connection).
func (r *Relay) fly(ctx context.Context, stop <-chan struct{}) (p pipelineResult, failed *flight, cause, err error) {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return p, nil, nil, fmt.Errorf("acquiring a connection to move events: %w", err)
	}
	conns := []*pgxpool.Conn{conn}
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	triedSecond := false

	// landed lands f; its failure ends the pipeline.
	landed := func(f *flight) bool {
		res, err := r.land(ctx, f)
		p.moved += res.moved
		if err != nil {
			r.resetCursor()
			failed, cause = f, err
			return false
		}
		if len(res.claimed) > 0 {
			r.observeBatch(f.start)
		}
		return true
	}
	// abandon rolls back cur, launched after the move in flight, and
	// leaves its rows for the next move.
	abandon := func(cur *flight) {
		r.abort(ctx, cur)
		r.resetCursor()
	}

	var prev *flight // in flight: launched, not yet landed
	for {
		var st *chainState
		db := conns[0]
		if prev != nil {
			if stopping(stop) {
				landed(prev)
				return p, failed, cause, nil
			}
			yielding := r.yielding()
			// After one wait, only a connection idle by now is taken: one
			// the pool was making during the wait, say.
			if len(conns) == 1 && !yielding && (!triedSecond || r.pool.Stat().IdleConns() > 0) {
				triedSecond = true
				if c := r.acquireSecond(ctx); c != nil {
					conns = append(conns, c)
				}
			}
			if len(conns) == 2 && !yielding {
				st = prev.st
				if prev.db == conns[0] {
					db = conns[1]
				}
			} else {
				// One connection, or another relay competing: the previous
				// move lands first.
				f := prev
				prev = nil
				if !landed(f) || stopping(stop) {
					return p, failed, cause, nil
				}
			}
		}

		cur, err := r.launch(ctx, db, nil, false, r.claimFrom.Load(), st)
		r.advanceCursor(cur.res, err)
		p.lastClaimed, p.lastFromHead = len(cur.res.claimed), cur.from == 0
		if err != nil {
			r.observeBatch(cur.start)
			if prev != nil {
				landed(prev)
			}
			if errors.Is(err, errGaveWay) { // not a failure
				r.yield(err, cur.res.claimed)
				p.again = true
				return p, failed, cause, nil
			}
			return p, failed, cause, err
		}

		if prev != nil {
			if limit := stallLimit(time.Duration(r.lastCopy.Load())); r.stalled(ctx, prev, limit) {
				abandon(cur)
				r.yield(fmt.Errorf("%w: the move before it has copied for %s and waits for a lock", errGaveWay, limit),
					cur.res.claimed)
				p.again = true
				landed(prev)
				return p, failed, cause, nil
			}
			if !landed(prev) {
				abandon(cur) // it went on from prev's end
				return p, failed, cause, nil
			}
			prev = nil
			if stopping(stop) {
				abandon(cur)
				return p, nil, nil, nil
			}
		}

		if len(cur.res.claimed) < r.cfg.BatchSize || stopping(stop) {
			landed(cur)
			return p, failed, cause, nil
		}
		prev = cur
	}
}

// yield records a move launched ahead that was rolled back with cause
// (rowsLeft) after claiming claimed, which the next move takes: counted as
// a conflict (errSpeculation) or as giving way (errGaveWay), logged, and
// the relay moves one batch at a time for conflictPause.
func (r *Relay) yield(cause error, claimed []int64) {
	r.pauseUntil.Store(time.Now().Add(conflictPause).UnixNano())
	var first any // none when the claim itself gave way
	if len(claimed) > 0 {
		first = claimed[0]
	}
	if errors.Is(cause, errSpeculation) {
		r.conflicts.Add(1)
		if r.metrics != nil {
			r.metrics.conflicts.Inc()
		}
		r.log.Info("relay: another relay's move committed first; this move was rolled back and its rows move next",
			"rows", len(claimed), "first_pos", first)
		return
	}
	r.gaveWay.Add(1)
	if r.metrics != nil {
		r.metrics.gaveWay.Inc()
	}
	r.log.Warn("relay: a move launched ahead gave way and was rolled back; its rows move next",
		"rows", len(claimed), "first_pos", first, "error", cause)
}

// blockedSQL tells whether the backend $1 waits for a lock.
const blockedSQL = `SELECT cardinality(pg_blocking_pids($1)) > 0`

// stalled waits for f's copy and reports whether it stalled: it has not
// returned after limit and its backend waits for a lock (or, when the pool
// cannot tell within a second, may). A copy that is only slow is waited
// for.
func (r *Relay) stalled(ctx context.Context, f *flight, limit time.Duration) bool {
	for !copiedWithin(f, limit) {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var blocked bool
		err := r.pool.QueryRow(qctx, blockedSQL, int64(f.pid)).Scan(&blocked)
		cancel()
		if err != nil || blocked {
			return true
		}
	}
	return false
}

// copiedWithin waits up to d for f's copy to return, and reports whether it
// did.
func copiedWithin(f *flight, d time.Duration) bool {
	if f.copied == nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.copied:
		return true
	case <-t.C:
		return false
	}
}

// acquireSecond returns a second connection for a pipeline, or nil when the
// pool has none to spare within secondConnWait: waiting longer would hold
// back the move in flight.
func (r *Relay) acquireSecond(ctx context.Context) *pgxpool.Conn {
	if r.maxConns < 2 {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, secondConnWait)
	defer cancel()
	c, err := r.pool.Acquire(actx)
	if err != nil {
		return nil
	}
	return c
}

// stopping reports whether stop is closed; a nil stop never is.
func stopping(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}
