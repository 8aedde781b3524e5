package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/outbox"
)

// Edge cases of outbox.Tx, from a review of it: failures at every step of
// Commit, savepoints, isolation levels, exec modes, use after the end.

// requirePoolHealthy: no connection stays held (a destroyed one is let go
// asynchronously), and every connection the pool hands out is usable and
// outside a transaction.
func requirePoolHealthy(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 0 },
		5*time.Second, 10*time.Millisecond, "a connection is still held")
	conns := make([]*pgxpool.Conn, pool.Stat().MaxConns())
	for i := range conns {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		conns[i] = c
		require.Equal(t, byte('I'), c.Conn().PgConn().TxStatus(), "a pooled connection is inside a transaction")
		var one int
		require.NoError(t, c.QueryRow(ctx, `SELECT 1`).Scan(&one))
	}
	for _, c := range conns {
		c.Release()
	}
}

// TestTxCommitCancelledOnCallerConn: Commit with recorded events and a
// context already cancelled fails, and on a connection the caller keeps
// (BeginOn) the transaction is still ended: the cleanup ROLLBACK does not
// use the cancelled context (it once did, and the caller's next transaction
// on the connection committed the abandoned change without its event).
func TestTxCommitCancelledOnCallerConn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	pc, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer pc.Release()
	conn := pc.Conn()

	tx, err := outbox.BeginOn(ctx, conn)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('abandoned')`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, tx.Commit(cancelled), context.Canceled)

	assert.True(t, conn.IsClosed() || conn.PgConn().TxStatus() == 'I',
		"after a failed Commit the caller's connection is still in transaction (status %q)", conn.PgConn().TxStatus())

	// The caller goes on with its connection.
	if !conn.IsClosed() {
		_ = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO business VALUES ('next')`)
			return err
		})
	}
	var abandoned, events int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM business WHERE name = 'abandoned'`).Scan(&abandoned))
	events = countOutbox(t, pool)
	require.Equal(t, abandoned, events,
		"the change of the failed Commit is committed %d time(s) with %d event(s)", abandoned, events)
}

// TestTxCommitCancelledOnPool: the same on a pool's connection is
// safe: the connection is destroyed rather than returned mid-transaction.
func TestTxCommitCancelledOnPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('a')`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, tx.Commit(cancelled), context.Canceled)
	require.ErrorIs(t, tx.Rollback(ctx), pgx.ErrTxClosed)

	requirePoolHealthy(t, pool)
	require.Zero(t, countBusiness(t, pool))
	require.Zero(t, countOutbox(t, pool))
}

// TestTxCommitDeadlineMidCommit: the context expires while the
// server runs the batch's COMMIT (a deferred trigger sleeps in it). The
// client cannot know the outcome, but whatever the server did, the change
// and its events share it, and the connection is not reused.
func TestTxCommitDeadlineMidCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON business
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()`)
	require.NoError(t, err)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('a')`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(2)))
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	err = tx.Commit(short)
	require.Error(t, err)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Let the server finish (or abandon) the COMMIT of the dropped session.
	require.Eventually(t, func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'`).Scan(&n)
		return n == 0
	}, 10*time.Second, 50*time.Millisecond)
	b, e := countBusiness(t, pool), countOutbox(t, pool)
	require.True(t, b == 1 && e == 2 || b == 0 && e == 0, "business %d, events %d", b, e)
	requirePoolHealthy(t, pool)
}

// TestRecordBatchAfterCommitOfPgxTx: RecordBatch on a pgx.Tx that has
// ended fails with ErrTxClosed, as pgx's CopyFrom does. copyRows talks to
// pgconn, which knows nothing of the transaction; without its check the
// COPY ran on a connection already back in the pool, outside any
// transaction.
func TestRecordBatchAfterCommitOfPgxTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	for _, end := range []string{"commit", "rollback"} {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		if end == "commit" {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
		err = outbox.RecordBatch(ctx, tx, []outbox.Event{sampleEvent(1)})
		assert.ErrorIs(t, err, pgx.ErrTxClosed, "RecordBatch after %s", end)
	}
	require.Zero(t, countOutbox(t, pool), "events written outside any transaction, on a released connection")
}

// TestRecordBatchAfterCommitOfOutboxTx: on an outbox.Tx that has ended,
// RecordBatch answers ErrTxClosed too (it once panicked on the nil Conn).
func TestRecordBatchAfterCommitOfOutboxTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, tx.Commit(ctx))

	var batchErr error
	require.NotPanics(t, func() {
		batchErr = outbox.RecordBatch(ctx, tx, []outbox.Event{sampleEvent(2)})
	}, "RecordBatch on a committed outbox.Tx")
	require.ErrorIs(t, batchErr, pgx.ErrTxClosed)
	require.Equal(t, 1, countOutbox(t, pool))
}

// TestTxLargeObjectsAfterCommit: after a Commit with events, LargeObjects,
// which comes from the pgx transaction underneath, answers ErrTxClosed: the
// batch's COMMIT ended the transaction on the server, and Commit closes the
// pgx one too (before, large objects were created after Commit, outside
// any transaction).
func TestTxLargeObjectsAfterCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, tx.Commit(ctx))

	lo := tx.LargeObjects()
	oid, err := lo.Create(ctx, 0)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_largeobject_metadata`).Scan(&n))
	require.ErrorIs(t, err, pgx.ErrTxClosed, "large object %d created after Commit, %d in the database", oid, n)
}

// TestTxOuterRecordInsideSavepoint: with a pgx.Tx, whatever is sent
// through the outer transaction while a savepoint is open belongs to the
// savepoint (it is the same session), and rolling the savepoint back undoes
// it. So once a savepoint is begun, an outbox.Tx's own Record writes at
// once; kept until Commit, the event outlived the change the savepoint's
// rollback undid. A closure that captured the outer tx inside
// pgx.BeginFunc(ctx, tx, ...) does exactly this.
func TestTxOuterRecordInsideSavepoint(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	failed := errors.New("step failed")

	// change writes the business row and its event through tx.
	change := func(tx pgx.Tx, name string, i int) error {
		if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, name); err != nil {
			return err
		}
		return outbox.Record(ctx, tx, sampleEvent(i))
	}
	body := func(tx pgx.Tx, name string, i int) error {
		err := pgx.BeginFunc(ctx, tx, func(pgx.Tx) error {
			if err := change(tx, name, i); err != nil { // the outer tx, captured
				return err
			}
			return failed // the step is rolled back to its savepoint
		})
		require.ErrorIs(t, err, failed)
		return nil
	}

	// pgx.Tx: neither the change nor the event survives the savepoint.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return body(tx, "pgx", 1) }))
	require.Zero(t, countBusiness(t, pool))
	require.Zero(t, countOutbox(t, pool))

	// outbox.Tx: the same code.
	require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return body(tx, "outbox", 2) }))
	require.Zero(t, countBusiness(t, pool))
	require.Zero(t, countOutbox(t, pool), "an event committed whose business change was rolled back with its savepoint")
}

// TestTxSerializableCommitFailure: under SERIALIZABLE the COMMIT
// itself can fail (40001, a dangerous structure found at commit). The
// failure reaches the caller as a *pgconn.PgError a retry loop can detect;
// nothing of the loser is kept, the winner keeps its change and events, and
// no connection stays held or in a transaction.
func TestTxSerializableCommitFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL);
INSERT INTO doctors VALUES ('alice', true), ('bob', true)`)
	require.NoError(t, err)
	opts := pgx.TxOptions{IsoLevel: pgx.Serializable}

	t1, err := outbox.BeginTx(ctx, pool, opts)
	require.NoError(t, err)
	t2, err := outbox.BeginTx(ctx, pool, opts)
	require.NoError(t, err)
	for _, tx := range []*outbox.Tx{t1, t2} {
		var n int
		require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM doctors WHERE on_call`).Scan(&n))
		require.Equal(t, 2, n)
	}
	_, err = t1.Exec(ctx, `UPDATE doctors SET on_call = false WHERE name = 'alice'`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, t1, sampleEvent(1)))
	_, err = t2.Exec(ctx, `UPDATE doctors SET on_call = false WHERE name = 'bob'`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, t2, sampleEvent(2)))
	require.NoError(t, outbox.Record(ctx, t2, sampleEvent(3)))

	require.NoError(t, t1.Commit(ctx))
	err = t2.Commit(ctx)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "40001", pgErr.Code, "%v", err)
	require.ErrorIs(t, t2.Rollback(ctx), pgx.ErrTxClosed)

	var onCall int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM doctors WHERE on_call`).Scan(&onCall))
	require.Equal(t, 1, onCall)
	rows, err := pool.Query(ctx, `SELECT request_id FROM audit_outbox ORDER BY pos`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"req_1"}, got)
	requirePoolHealthy(t, pool)
}

// TestTxRepeatableReadConflict: under REPEATABLE READ a concurrent
// update fails the statement (40001), BeginFunc rolls back, and the event
// recorded before it is not written.
func TestTxRepeatableReadConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `INSERT INTO business VALUES ('a')`)
	require.NoError(t, err)

	tx, err := outbox.BeginTx(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, `SELECT 1 FROM business`).Scan(new(int))) // snapshot
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	_, err = pool.Exec(ctx, `UPDATE business SET name = 'b'`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE business SET name = 'c'`)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "40001", pgErr.Code)
	require.Error(t, tx.Commit(ctx))
	require.Zero(t, countOutbox(t, pool))
	requirePoolHealthy(t, pool)
}

// TestTxManyLargeEvents: hundreds of events near the details limit
// in one Tx go in the one batch and all land.
func TestTxManyLargeEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	const n = 300
	pad := strings.Repeat("x", outbox.MaxDetailsBytesDefault-20)
	require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ('a')`); err != nil {
			return err
		}
		for i := range n {
			e := sampleEvent(i)
			e.Details = map[string]any{"p": pad[:len(pad)-i%7]}
			if err := outbox.Record(ctx, tx, e); err != nil {
				return err
			}
		}
		return nil
	}))
	var count, bad int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE length(details) < $1)
FROM audit_outbox`, len(pad)-10).Scan(&count, &bad))
	require.Equal(t, n, count)
	require.Zero(t, bad)
	requirePoolHealthy(t, pool)
}

// TestTxRefusedInLongBatch: the server refusing one INSERT in the
// middle of many fails Commit with it; nothing is kept.
func TestTxRefusedInLongBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `ALTER TABLE audit_outbox ADD CONSTRAINT refuse CHECK (request_id <> 'req_250')`)
	require.NoError(t, err)
	err = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ('a')`); err != nil {
			return err
		}
		for i := range 500 {
			if err := outbox.Record(ctx, tx, sampleEvent(i)); err != nil {
				return err
			}
		}
		return nil
	})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23514", pgErr.Code)
	require.Zero(t, countOutbox(t, pool))
	require.Zero(t, countBusiness(t, pool))
	requirePoolHealthy(t, pool)
}

// TestTxReadOnly: a read-only Tx accepts Record (it only validates)
// and refuses at Commit; nothing is kept and the connection goes back clean.
func TestTxReadOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	tx, err := outbox.BeginTx(ctx, pool, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	err = tx.Commit(ctx)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "25006", pgErr.Code)
	require.Zero(t, countOutbox(t, pool))
	requirePoolHealthy(t, pool)
}

// TestTxNestedSavepoints: events in a released savepoint two deep are
// kept, those in a rolled-back one (and the savepoints inside it) are not,
// and the deferred outer events are written with the COMMIT.
func TestTxNestedSavepoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
		require.NoError(t, pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			require.NoError(t, outbox.Record(ctx, sp, sampleEvent(2)))
			return pgx.BeginFunc(ctx, sp, func(sp2 pgx.Tx) error {
				return outbox.Record(ctx, sp2, sampleEvent(3))
			})
		}))
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			require.NoError(t, outbox.Record(ctx, sp, sampleEvent(4)))
			require.NoError(t, pgx.BeginFunc(ctx, sp, func(sp2 pgx.Tx) error {
				return outbox.Record(ctx, sp2, sampleEvent(5))
			}))
			return errors.New("undo 4 and 5")
		})
		require.Error(t, err)
		return outbox.Record(ctx, tx, sampleEvent(6))
	}))
	rows, err := pool.Query(ctx, `SELECT request_id FROM audit_outbox ORDER BY request_id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"req_1", "req_2", "req_3", "req_6"}, got)
	requirePoolHealthy(t, pool)
}

// TestTxRecordBatchAndQueue: RecordBatch (COPY, at once) and a Queue'd
// batch sent through the Tx share its fate with the deferred Records.
func TestTxRecordBatchAndQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	for _, commit := range []bool{false, true} {
		tx, err := outbox.Begin(ctx, pool)
		require.NoError(t, err)
		require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
		require.NoError(t, outbox.RecordBatch(ctx, tx, []outbox.Event{sampleEvent(2), sampleEvent(3)}))
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO business VALUES ($1)`, fmt.Sprint(commit))
		require.NoError(t, outbox.Queue(ctx, b, sampleEvent(4)))
		require.NoError(t, tx.SendBatch(ctx, b).Close())
		require.NoError(t, outbox.Record(ctx, tx, sampleEvent(5)))
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
			require.Zero(t, countOutbox(t, pool))
			require.Zero(t, countBusiness(t, pool))
		}
	}
	require.Equal(t, 5, countOutbox(t, pool))
	require.Equal(t, 1, countBusiness(t, pool))
	requirePoolHealthy(t, pool)
}

// TestTxConcurrentBeginFunc: many concurrent BeginFuncs, some failing
// at Commit, leave events exactly where the change committed and no
// connection held.
func TestTxConcurrentBeginFunc(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `ALTER TABLE audit_outbox ADD CONSTRAINT refuse CHECK (request_id NOT LIKE '%7')`)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			_ = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, fmt.Sprint(i)); err != nil {
					return err
				}
				return outbox.Record(ctx, tx, sampleEvent(i))
			})
		})
	}
	wg.Wait()
	var orphans int
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FROM business b FULL JOIN audit_outbox o ON o.request_id = 'req_' || b.name
WHERE b.name IS NULL OR o.id IS NULL`).Scan(&orphans))
	require.Zero(t, orphans)
	require.Equal(t, 36, countBusiness(t, pool))
	requirePoolHealthy(t, pool)
}

// TestTxCommitQueryRuns: BeginTx takes pgx.TxOptions, whose CommitQuery is
// the statement that ends the transaction (e.g. PREPARE TRANSACTION for
// two-phase commit). Commit runs it with events or without, as pgx.Tx does,
// never a plain COMMIT in its place. The server here has prepared
// transactions disabled, so running the CommitQuery fails and commits
// nothing.
func TestTxCommitQueryRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	opts := pgx.TxOptions{CommitQuery: "PREPARE TRANSACTION 'outbox_2pc'"}
	var off int
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting('max_prepared_transactions')::int`).Scan(&off))
	if off != 0 {
		t.Skip("needs max_prepared_transactions = 0")
	}

	for _, events := range []int{0, 1} {
		tx, err := outbox.BeginTx(ctx, pool, opts)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, fmt.Sprint(events))
		require.NoError(t, err)
		for i := range events {
			require.NoError(t, outbox.Record(ctx, tx, sampleEvent(i)))
		}
		err = tx.Commit(ctx)
		assert.Error(t, err, "with %d events, Commit did not run the CommitQuery %q", events, opts.CommitQuery)
	}
	require.Zero(t, countBusiness(t, pool), "committed with COMMIT rather than the CommitQuery")
	require.Zero(t, countOutbox(t, pool))
}

// TestTxExecModes: the batch commit behaves the same whatever the
// connection's default query exec mode: events land with the change, a
// refused one fails Commit and keeps nothing, and the connection goes back
// idle. Under the exec and simple protocol modes (PgBouncer's) pgx knows no
// column types and encodes values as text; the inet column once had no
// text form, and every Record failed there, in any transaction.
func TestTxExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			base, _ := txPool(t)
			_, err := base.Exec(ctx, `ALTER TABLE audit_outbox ADD CONSTRAINT refuse CHECK (request_id <> 'req_9')`)
			require.NoError(t, err)
			cfg := base.Config()
			cfg.ConnConfig.DefaultQueryExecMode = mode
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			require.NoError(t, err)
			t.Cleanup(pool.Close)

			event := sampleEvent
			for round := range 2 { // the second round has the statements cached
				require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, fmt.Sprint(round)); err != nil {
						return err
					}
					for i := range 3 {
						if err := outbox.Record(ctx, tx, event(10*round+i)); err != nil {
							return err
						}
					}
					return nil
				}))
				err := outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, fmt.Sprint("refused", round)); err != nil {
						return err
					}
					for _, i := range []int{100 + round, 9, 200 + round} {
						if err := outbox.Record(ctx, tx, event(i)); err != nil {
							return err
						}
					}
					return nil
				})
				var pgErr *pgconn.PgError
				require.ErrorAs(t, err, &pgErr)
				require.Equal(t, "23514", pgErr.Code)
			}
			require.Equal(t, 2, countBusiness(t, pool))
			require.Equal(t, 6, countOutbox(t, pool))
			requirePoolHealthy(t, pool)
		})
	}
}
