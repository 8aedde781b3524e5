package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// claimedColumns are what the relay reads of each claimed row: pos, the
// columns it copies into audit_events (eventColumns less seq and the
// links), and the address once more as host() prints it, as the API shows
// it, for the canonical bytes.
const claimedColumns = `pos, id, workspace_id, occurred_at, recorded_at, action, actor_type,
       actor_id, actor_email, actor_name, resource_type, resource_ids,
       resource_ids_flat, source, ip, user_agent, request_id, details, host(ip)`

// claimHeadRowsSQL claims the oldest $1 outbox rows after pos $2 that no
// other transaction holds and returns them in pos order. Rows of
// uncommitted business transactions are invisible, rows claimed by another
// relay are skipped, so relays never wait for each other here. $2 is the
// relay's claim cursor (Relay.claimFrom), 0 for the whole outbox.
const claimHeadRowsSQL = `
SELECT ` + claimedColumns + `
FROM audit_outbox
WHERE pos > $2
ORDER BY pos
LIMIT $1
FOR UPDATE SKIP LOCKED`

// claimPositionsRowsSQL claims the outbox rows at positions $1 that still
// exist and no other transaction holds; used when a failed batch is split.
const claimPositionsRowsSQL = `
SELECT ` + claimedColumns + `
FROM audit_outbox
WHERE pos = ANY($1::bigint[])
ORDER BY pos
FOR UPDATE SKIP LOCKED`

// lockSeqSQL takes the audit_seq counter row lock, held until commit, and
// reads the last seq: in READ COMMITTED each statement sees what was
// committed when it began, so the statements that follow see every earlier
// move's events and chain heads. A move that starts from the database is
// serialised with every other from here to commit.
//
// It also turns JIT off for the rest of the move transaction: JIT never
// pays off for a batch-sized statement, and a misestimated custom plan of
// the move crossed jit_above_cost (~250 ms of compiling per move on each new
// connection, PERFORMANCE.md).
const lockSeqSQL = `SELECT last_seq, set_config('jit', 'off', true) FROM audit_seq FOR UPDATE`

// lockSeqNowaitSQL takes the audit_seq row lock in the finish of a move
// launched while another was in flight, failing at once (lock_not_available)
// rather than waiting when another relay's move holds it.
const lockSeqNowaitSQL = `SELECT last_seq FROM audit_seq FOR UPDATE NOWAIT`

// followingSettingsSQL starts a move launched while another is in flight:
// JIT off, as lockSeqSQL turns it off for the others, and a lock_timeout
// (stallAfter), so that no statement of the move waits long for a lock.
// Such a move must not wait behind anything that may wait for the move in
// flight, which cannot end before this one: a DDL statement queued behind
// the move in flight (a migration's ALTER TABLE, say) would otherwise hold
// up its claim or its finish in a cycle PostgreSQL cannot see.
const followingSettingsSQL = `SELECT set_config('jit', 'off', true), set_config('lock_timeout', '1s', true)`

// chainHeadsSQL reads the chain heads of the workspaces $1.
const chainHeadsSQL = `SELECT workspace_id, hash FROM audit_chain_heads WHERE workspace_id = ANY($1::text[])`

// storedAlreadySQL lists the claimed positions $1 whose event is already
// stored (a resend); they are moved out of the outbox but not stored again.
const storedAlreadySQL = `
SELECT o.pos FROM audit_outbox o
WHERE o.pos = ANY($1::bigint[])
  AND EXISTS (
    SELECT 1 FROM audit_events e
    WHERE e.workspace_id = o.workspace_id AND e.occurred_at = o.occurred_at AND e.id = o.id)`

// eventColumns are the audit_events columns the relay copies, in the order
// of chained.Values.
var eventColumns = []string{
	"seq", "id", "workspace_id", "occurred_at", "recorded_at", "action", "actor_type",
	"actor_id", "actor_email", "actor_name", "resource_type", "resource_ids",
	"resource_ids_flat", "source", "ip", "user_agent", "request_id", "details",
	"prev_hash", "hash",
}

// finishMoveSQL completes a move once its events are copied into
// audit_events: it advances audit_seq by cardinality($1), so seq is strictly
// increasing in commit order (the counter row stays locked until commit);
// deletes the claimed outbox rows $1; and writes the new chain heads ($2
// workspaces, $3 seq, $4 hash). Returns the rows deleted and the last
// reserved seq, which the caller checks is the one its events were
// numbered up to. A claimed row that was not copied (a resend) leaves the
// outbox and its seq value stays unused.
const finishMoveSQL = `
WITH counter AS (
    UPDATE audit_seq SET last_seq = last_seq + cardinality($1::bigint[])
    RETURNING last_seq
), moved AS (
    DELETE FROM audit_outbox
    WHERE pos = ANY($1::bigint[])
    RETURNING pos
), heads AS (
    INSERT INTO audit_chain_heads (workspace_id, seq, hash)
    SELECT * FROM unnest($2::text[], $3::bigint[], $4::bytea[])
    ON CONFLICT (workspace_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
)
SELECT (SELECT count(*) FROM moved),
       (SELECT last_seq FROM counter)`

// occurredAtSQL reads the occurred_at of the outbox row at pos $1.
const occurredAtSQL = `SELECT occurred_at FROM audit_outbox WHERE pos = $1`

// deadLetterSQL sets the outbox row at pos $1 aside in audit_dead_letters
// with the error text $2, counting this failure on top of the row's earlier
// ones (a retried dead letter's). It waits for a relay still holding the
// row: if that relay moves it, there is nothing left to set aside.
const deadLetterSQL = `
WITH failed AS (
    DELETE FROM audit_outbox WHERE pos = $1
    RETURNING *
)
INSERT INTO audit_dead_letters (
    pos, error, attempts, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids,
    resource_ids_flat, source, ip, user_agent, request_id, details
)
SELECT pos, $2, attempts + 1, id, workspace_id, occurred_at, recorded_at, action, actor_type,
       actor_id, actor_email, actor_name, resource_type, resource_ids,
       resource_ids_flat, source, ip, user_agent, request_id, details
FROM failed
ON CONFLICT (pos) DO UPDATE
SET error = EXCLUDED.error,
    failed_at = now(),
    attempts = greatest(audit_dead_letters.attempts + 1, EXCLUDED.attempts)`

// rollbackTimeout bounds a rollback, which runs even when the move's
// context is already cancelled.
const rollbackTimeout = 5 * time.Second

// moveResult is the outcome of one move transaction.
type moveResult struct {
	// claimed are the positions this transaction claimed, in order; on a
	// failed move they are released again.
	claimed []int64
	// lastSeq is the highest seq reserved; the range is
	// lastSeq-len(claimed)+1 .. lastSeq.
	lastSeq int64
	// moved rows left the outbox; stored of them were inserted, the rest
	// were already stored.
	moved, stored int
}

// errSpeculation reports that a move launched while the previous one was in
// flight found, at its finish, that another relay's move had committed in
// between, so its seq numbers and links were wrong; it was rolled back and
// its rows are left for the next move, which starts from the database.
var errSpeculation = errors.New("relay: another relay moved events meanwhile; the move was rolled back to be done again")

// errGaveWay reports that a move launched while another was in flight gave
// way: a lock it needed was not free within its lock_timeout
// (followingSettingsSQL), or the move before it stalled waiting for a lock
// (Relay.stalled). It was rolled back and its rows are left for the next
// move.
var errGaveWay = errors.New("relay: a move launched ahead gave way")

// rowsLeft reports whether a move that failed with err was rolled back on
// purpose, its rows left in the outbox for the next move to take at once.
func rowsLeft(err error) bool {
	return errors.Is(err, errSpeculation) || errors.Is(err, errGaveWay)
}

// gaveWay wraps err, a lock a move launched ahead could not take at once,
// as errGaveWay.
func gaveWay(err error) error {
	return fmt.Errorf("%w: %w", errGaveWay, err)
}

// beginner begins transactions: the pool, or a connection a pipeline holds.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// flight is a move transaction from its claim until it commits or rolls
// back: its events are being copied into audit_events, by a goroutine of
// its own, and st stands where the move will end.
type flight struct {
	tx    pgx.Tx
	db    beginner
	res   moveResult
	start time.Time
	// dedupe: resends were looked up before the copy.
	dedupe bool
	// following: the move went on from one still in flight (st was
	// given), so it has not locked the counter yet.
	following bool
	// pid is the move's backend (stall checks).
	pid uint32
	// from is the claim cursor the move claimed after (0: the head).
	from int64
	st   *chainState
	c    *chained
	// copied is closed once the copy has returned stored and copyErr; nil
	// when no copy was started. cancel ends the copy early (abort) and
	// frees its context.
	copied  chan struct{}
	cancel  context.CancelFunc
	stored  int64
	copyErr error
}

// MoveOnce moves one batch (up to Config.BatchSize rows) in one transaction
// and returns how many outbox rows were moved into audit_events. Rows that
// cannot be stored are set aside as dead letters, not counted. It is safe to
// call while the relay runs; tests use it.
func (r *Relay) MoveOnce(ctx context.Context) (moved int, err error) {
	_, moved, err = r.moveBatch(ctx)
	return moved, err
}

// Drain moves batches as the relay loop does, two in flight while a backlog
// lasts (pipeline.go), until a move from the head of the outbox finds
// nothing to move, and returns how many rows it moved in all. Like MoveOnce
// it is safe while the relay runs; benchmarks and one-off catch-ups use it.
func (r *Relay) Drain(ctx context.Context) (moved int, err error) {
	for {
		// A move past the claim cursor that finds nothing has not seen rows
		// committed late under a lower pos; it resets the cursor, and the
		// next move looks from the head.
		p, err := r.pipeline(ctx, nil)
		moved += p.moved
		if err != nil || (p.lastClaimed == 0 && p.lastFromHead && !p.again) {
			return moved, err
		}
	}
}

// moveBatch moves the head of the outbox in one transaction, isolating rows
// that cannot be stored. claimed is the size of the batch taken, so the
// caller knows whether more is waiting.
func (r *Relay) moveBatch(ctx context.Context) (claimed, moved int, err error) {
	start := time.Now()
	res, err := r.moveTxWith(ctx, nil, false)
	r.advanceCursor(res, err)
	claimed, moved = len(res.claimed), res.moved
	if err != nil {
		moved, err = r.redo(ctx, res.claimed, err)
		r.countFailure(ctx, err)
	}
	if claimed > 0 || err != nil {
		r.observeBatch(start)
	}
	return claimed, moved, err
}

// observeBatch records the duration of a batch started at start: one move
// from its claim to its commit, or a failed move with its redo.
func (r *Relay) observeBatch(start time.Time) {
	if r.metrics != nil {
		r.metrics.batchSeconds.Observe(time.Since(start).Seconds())
	}
}

// redo deals with a move of claimed that failed with cause and was rolled
// back: a move launched ahead that raced another relay's or gave way is
// left for the next move (yield); a batch holding a resend is moved again,
// looking for resends first; a batch holding a row that cannot be stored is
// split to isolate it. Any other error is returned, the rows staying in the
// outbox.
func (r *Relay) redo(ctx context.Context, claimed []int64, cause error) (moved int, err error) {
	if rowsLeft(cause) {
		r.yield(cause, claimed)
		return 0, nil
	}
	err = cause
	if errors.Is(err, errDuplicateInBatch) {
		var res moveResult
		res, err = r.moveTxWith(ctx, claimed, true)
		moved, claimed = res.moved, res.claimed
	}
	if err != nil && isRowError(err) && len(claimed) > 0 {
		// Some row of the batch cannot be stored: find it, move the rest.
		r.log.Warn("relay: batch insert failed, splitting it to isolate the failing rows",
			"rows", len(claimed), "first_pos", claimed[0], "error", err)
		var n int
		n, err = r.salvage(ctx, claimed, err)
		moved += n
	}
	return moved, err
}

// countFailure counts a failed move in the stats and metrics, unless it
// failed because ctx ended (a stop, not a failure).
func (r *Relay) countFailure(ctx context.Context, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	r.errors.Add(1)
	if r.metrics != nil {
		r.metrics.errors.Inc()
	}
}

// salvage moves what it can of positions, whose move together failed with
// cause, by splitting them in halves, each moved in its own transaction, until
// single failing rows remain; those go through moveOne.
func (r *Relay) salvage(ctx context.Context, positions []int64, cause error) (moved int, err error) {
	if len(positions) == 1 {
		return r.moveOne(ctx, positions[0], cause)
	}
	half := len(positions) / 2
	for _, part := range [][]int64{positions[:half], positions[half:]} {
		res, err := r.moveTx(ctx, part)
		moved += res.moved
		if err == nil {
			continue
		}
		if !isRowError(err) || len(res.claimed) == 0 {
			return moved, err
		}
		n, err := r.salvage(ctx, res.claimed, err)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// moveOne handles the single row at pos whose move failed with cause: when
// no partition holds its occurred_at and an ensurer is configured, it
// creates one and retries; otherwise, or if that fails too, the row becomes
// a dead letter.
func (r *Relay) moveOne(ctx context.Context, pos int64, cause error) (moved int, err error) {
	for attempt := 0; attempt < 2 && isMissingPartition(cause) && r.cfg.Partitions != nil; attempt++ {
		var occurredAt time.Time
		if err := r.pool.QueryRow(ctx, occurredAtSQL, pos).Scan(&occurredAt); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return 0, nil // moved or set aside by another relay meanwhile
			}
			return 0, fmt.Errorf("reading occurred_at of outbox row %d: %w", pos, err)
		}
		name, err := r.cfg.Partitions.EnsureFor(ctx, occurredAt)
		if err != nil {
			if isTransient(err) {
				// Leave the row for the next attempt rather than set it
				// aside over a passing problem.
				return 0, fmt.Errorf("ensuring partition for outbox row %d: %w", pos, err)
			}
			cause = fmt.Errorf("%w; ensuring a partition for occurred_at %s failed: %w",
				cause, occurredAt.UTC().Format(time.RFC3339Nano), err)
			break
		}
		r.log.Info("relay: ensured partition for event", "pos", pos,
			"occurred_at", occurredAt.UTC(), "partition", name)
		res, err := r.moveTx(ctx, []int64{pos})
		if err == nil {
			return res.moved, nil
		}
		if !isRowError(err) {
			return 0, err
		}
		cause = err
	}
	if err := r.deadLetter(ctx, pos, cause); err != nil {
		return 0, err
	}
	return 0, nil
}

// deadLetter sets the outbox row at pos aside with cause's text.
func (r *Relay) deadLetter(ctx context.Context, pos int64, cause error) error {
	tag, err := r.pool.Exec(ctx, deadLetterSQL, pos, errorText(cause))
	if err != nil {
		return fmt.Errorf("moving outbox row %d to dead letters: %w", pos, err)
	}
	if tag.RowsAffected() == 0 {
		return nil // moved or set aside by another relay meanwhile
	}
	r.deadLettered.Add(1)
	if r.metrics != nil {
		r.metrics.deadLetters.Inc()
	}
	r.log.Error("relay: event moved to dead letters", "pos", pos, "error", cause)
	return nil
}

// moveTx runs one move transaction over the head of the outbox (positions
// nil) or over the given positions. On error the transaction is rolled back
// and res.claimed still tells which rows it had claimed.
func (r *Relay) moveTx(ctx context.Context, positions []int64) (res moveResult, err error) {
	res, err = r.moveTxWith(ctx, positions, false)
	if errors.Is(err, errDuplicateInBatch) {
		// The batch holds an event already stored: move the same rows
		// again, looking for such events before the chain is computed.
		return r.moveTxWith(ctx, res.claimed, true)
	}
	return res, err
}

// errDuplicateInBatch reports that the batch holds an event already stored
// or repeated, found as a unique violation while copying; the move was
// rolled back.
var errDuplicateInBatch = errors.New("relay: the batch holds an event already stored")

// moveTxWith is moveTx, looking for already-stored events first when
// dedupe is set. Resends are rare, and looking for them costs an index probe
// of every partition per row, so the first attempt does not: it chains every
// claimed row and lets the primary key tell.
func (r *Relay) moveTxWith(ctx context.Context, positions []int64, dedupe bool) (moveResult, error) {
	f, err := r.launch(ctx, r.pool, positions, dedupe, r.claimFrom.Load(), nil)
	if err != nil {
		return f.res, err
	}
	return r.land(ctx, f)
}

// launch begins a move on db: claims the head of the outbox after pos from
// (positions nil) or the given positions, numbers and links the rows, and
// starts copying them into audit_events. With st nil the move starts from
// the database, under the counter lock; otherwise it goes on from st, where
// a move still in flight will end. The returned flight must be landed or
// aborted, unless launch failed, in which case it is rolled back and
// f.res.claimed still tells which rows it had claimed. A move that claims
// nothing is committed at once.
func (r *Relay) launch(ctx context.Context, db beginner, positions []int64, dedupe bool, from int64, st *chainState) (f *flight, err error) {
	f = &flight{db: db, start: time.Now(), dedupe: dedupe, from: from}
	if positions != nil {
		f.from = 0
	}
	f.tx, err = db.Begin(ctx)
	if err != nil {
		return f, fmt.Errorf("beginning move transaction: %w", err)
	}
	f.following = st != nil
	defer func() {
		if err == nil {
			return
		}
		rollback(ctx, f.tx)
		if f.following && isLockNotAvailable(err) {
			err = gaveWay(err)
		}
	}()

	if f.following {
		if _, err := f.tx.Exec(ctx, followingSettingsSQL); err != nil {
			return f, fmt.Errorf("setting up a move launched ahead: %w", err)
		}
	}
	rows, err := claimRows(ctx, f.tx, positions, r.cfg.BatchSize, f.from)
	if err != nil {
		return f, err
	}
	f.res.claimed = make([]int64, len(rows))
	for i := range rows {
		f.res.claimed[i] = rows[i].pos
	}
	if len(rows) == 0 {
		if err := f.tx.Commit(ctx); err != nil {
			return f, fmt.Errorf("ending an empty move: %w", err)
		}
		return f, nil
	}

	if !f.following {
		var lastSeq int64
		if err := f.tx.QueryRow(ctx, lockSeqSQL).Scan(&lastSeq, nil); err != nil {
			return f, fmt.Errorf("locking the seq counter: %w", err)
		}
		st = r.newChainState(lastSeq)
	}
	f.st = st
	f.pid = f.tx.Conn().PgConn().PID()
	if f.c, err = r.chain(ctx, f.tx, rows, st, dedupe); err != nil {
		return f, err
	}
	f.res.lastSeq = st.lastSeq
	if h := r.hooks.launched; h != nil {
		h(f.res, f.following)
	}
	var copyCtx context.Context
	copyCtx, f.cancel = context.WithCancel(ctx)
	f.copied = make(chan struct{})
	go func() {
		defer close(f.copied)
		start := time.Now()
		f.stored, f.copyErr = f.tx.CopyFrom(copyCtx, pgx.Identifier{"audit_events"}, eventColumns, f.c)
		if f.copyErr == nil {
			r.lastCopy.Store(int64(time.Since(start)))
		}
	}()
	return f, nil
}

// land completes the move f: waits for its copy, advances the counter,
// deletes the claimed rows and writes the chain heads, checks the counter
// ends where f's events were numbered up to, and commits. On error the move
// is rolled back.
func (r *Relay) land(ctx context.Context, f *flight) (res moveResult, err error) {
	res = f.res
	if f.copied == nil {
		return res, nil // claimed nothing, already committed
	}
	<-f.copied
	defer func() {
		f.cancel()
		if err == nil {
			return
		}
		rollback(ctx, f.tx)
		if f.following && isLockNotAvailable(err) {
			err = gaveWay(err)
		}
	}()
	if err := f.copyErr; err != nil {
		if !f.dedupe && isUniqueViolation(err) {
			// A resend: redo the batch looking for them.
			return res, errDuplicateInBatch
		}
		return res, fmt.Errorf("copying %d events from outbox pos %d into audit_events: %w",
			len(f.c.idx), res.claimed[0], err)
	}
	if f.following {
		// The counter now, without waiting: the move this one went on from
		// has committed, so a holder is another relay's move, about to
		// advance it; waiting could close a cycle PostgreSQL cannot see
		// (this move's own rows may be what that move's copy waits for).
		var before int64
		if err := f.tx.QueryRow(ctx, lockSeqNowaitSQL).Scan(&before); err != nil {
			if isLockNotAvailable(err) {
				return res, errSpeculation
			}
			return res, fmt.Errorf("locking the seq counter: %w", err)
		}
		if before != res.lastSeq-int64(len(res.claimed)) {
			return res, errSpeculation
		}
	}
	ws, seq, hash := f.c.newHeads()
	var moved, lastSeq int64
	if err := f.tx.QueryRow(ctx, finishMoveSQL,
		int8Array(res.claimed), textArray(ws), int8Array(seq), byteaArray(hash)).Scan(&moved, &lastSeq); err != nil {
		return res, fmt.Errorf("moving %d outbox rows from pos %d into audit_events: %w",
			len(res.claimed), res.claimed[0], err)
	}
	res.moved, res.stored = int(moved), int(f.stored)
	if lastSeq != res.lastSeq {
		// Impossible with the counter locked and, for a move launched
		// ahead, checked above; refuse to commit seq numbers that do not
		// match it.
		return res, fmt.Errorf("moving %d outbox rows from pos %d: the counter ended at %d, not %d",
			len(res.claimed), res.claimed[0], lastSeq, res.lastSeq)
	}
	if res.moved != len(res.claimed) {
		// Impossible while the claim's row locks hold; refuse to commit a
		// chain that would not match the outbox.
		return res, fmt.Errorf("moving %d outbox rows from pos %d: deleted %d of them",
			len(res.claimed), res.claimed[0], res.moved)
	}
	if h := r.hooks.beforeCommit; h != nil {
		if err := h(ctx, f.tx, res); err != nil {
			return res, err
		}
	}
	if err := f.tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("committing move of %d outbox rows: %w", len(res.claimed), err)
	}

	r.batches.Add(1)
	r.moved.Add(uint64(res.moved))
	r.duplicates.Add(uint64(res.moved - res.stored))
	r.lastSeq.Store(res.lastSeq)
	if r.metrics != nil {
		r.metrics.moved.Add(float64(res.moved))
	}
	if h := r.hooks.afterCommit; h != nil {
		h(res)
	}
	return res, nil
}

// abort rolls the move f back, ending its copy first. Cancelling a copy
// may leave its connection unusable; callers end the pipeline after an
// abort, so that the pool replaces it.
func (r *Relay) abort(ctx context.Context, f *flight) {
	if f.copied == nil {
		return // claimed nothing, already committed
	}
	f.cancel()
	<-f.copied
	rollback(ctx, f.tx)
	if f.tx.Conn().IsClosed() {
		r.awaitBackendGone(ctx, f.pid)
	}
}

// Cancelling a copy in progress closes its connection, but its backend
// goes on with the statement until it next talks to the client, holding
// the claimed rows' locks; claims skip locked rows, so until then the rows
// this move leaves for the next one are invisible to it, and a Drain could
// end with them still in the outbox (seen under load, with the backend
// lingering over 50 ms). So the abandoned backend's statement is cancelled
// and its end waited for, at most rollbackTimeout.
const (
	cancelBackendSQL = `SELECT pg_cancel_backend($1)`
	backendGoneSQL   = `SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`
)

// awaitBackendGone cancels backend pid's statement and waits until the
// backend has exited.
func (r *Relay) awaitBackendGone(ctx context.Context, pid uint32) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	_, _ = r.pool.Exec(wctx, cancelBackendSQL, int64(pid))
	for {
		var gone bool
		if err := r.pool.QueryRow(wctx, backendGoneSQL, int64(pid)).Scan(&gone); err != nil || gone {
			return
		}
		select {
		case <-wctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// rollback rolls tx back, even when ctx is already cancelled.
func rollback(ctx context.Context, tx pgx.Tx) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	_ = tx.Rollback(rctx)
}

// SQLSTATE classes of errors caused by a row's data rather than by the
// database or the connection: data exception, integrity constraint
// violation (including a missing partition), program limit exceeded (e.g.
// an index entry too large).
var rowErrorClasses = []string{"22", "23", "54"}

// isRowError reports whether err says some row cannot be stored, so that
// splitting the batch can isolate it. Anything else (connection lost,
// timeout, cancellation, a broken schema) is retried as a whole later, so a
// database problem never turns the outbox into dead letters.
func isRowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	for _, class := range rowErrorClasses {
		if strings.HasPrefix(pgErr.Code, class) {
			return true
		}
	}
	return false
}

// isTransient reports whether err is likely to pass by itself: a cancelled
// or timed-out context, a lost or refused connection, or a server error of
// the classes connection exception (08), transaction rollback (40),
// insufficient resources (53), object not in prerequisite state (55, e.g.
// lock_timeout), operator intervention (57) or system error (58).
func isTransient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:min(2, len(pgErr.Code))] {
		case "08", "40", "53", "55", "57", "58":
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err)
}

// lockNotAvailable is SQLSTATE lock_not_available (a NOWAIT lock refused).
const lockNotAvailable = "55P03"

// isLockNotAvailable reports whether err is a NOWAIT lock refused.
func isLockNotAvailable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == lockNotAvailable
}

// uniqueViolation is SQLSTATE unique_violation.
const uniqueViolation = "23505"

// isUniqueViolation reports whether err is a unique violation: copying an
// event already stored.
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == uniqueViolation
}

// checkViolation is SQLSTATE check_violation, which PostgreSQL also uses for
// "no partition of relation ... found for row".
const checkViolation = "23514"

// isMissingPartition reports whether err is PostgreSQL's "no partition of
// relation ... found for row". A real CHECK violation shares the SQLSTATE
// but always names its constraint; this error names none, which holds
// whatever the server's message language.
func isMissingPartition(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != checkViolation {
		return false
	}
	// A real CHECK violation names its constraint; "no partition of
	// relation ... found for row" names none. (Not matched on the message,
	// which lc_messages translates.)
	return pgErr.ConstraintName == ""
}

// errorText is what a dead letter records about cause: the message, with
// the server's detail when there is one.
func errorText(cause error) string {
	text := cause.Error()
	var pgErr *pgconn.PgError
	if errors.As(cause, &pgErr) && pgErr.Detail != "" {
		text += " (" + pgErr.Detail + ")"
	}
	return text
}
