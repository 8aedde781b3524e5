package outbox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

// roundTrips counts what a pool sends the server: each query and each batch
// is one round trip. A query given a context already done is never sent
// (Tx.Commit closes pgx's transaction so).
type roundTrips struct{ n, notices atomic.Int64 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	if ctx.Err() == nil {
		r.n.Add(1)
	}
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// txPool is a fresh database with a business table, and a pool on it
// counting round trips.
func txPool(t *testing.T) (*pgxpool.Pool, *roundTrips) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testdb.NewURL(t))
	require.NoError(t, err)
	rt := &roundTrips{}
	cfg.ConnConfig.Tracer = rt
	// A COMMIT sent with no transaction open would be answered with a
	// warning: there is no transaction in progress.
	cfg.ConnConfig.OnNotice = func(*pgconn.PgConn, *pgconn.Notice) { rt.notices.Add(1) }
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = pool.Exec(ctx, `CREATE TABLE business (name text PRIMARY KEY)`)
	require.NoError(t, err)
	return pool, rt
}

func countBusiness(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM business`).Scan(&n))
	return n
}

// TestTxSendsEventsWithCommit: in an outbox.Tx, Record sends nothing; the
// INSERTs go with the COMMIT, in one round trip, and land with the change.
func TestTxSendsEventsWithCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, rt := txPool(t)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('a')`)
	require.NoError(t, err)
	before := rt.n.Load()
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(2)))
	require.Equal(t, before, rt.n.Load(), "Record in an outbox.Tx sends nothing")

	// A refused event is refused at once, and the transaction goes on.
	bad := sampleEvent(3)
	bad.Action = "Nope"
	_, ok := outbox.AsValidationError(outbox.Record(ctx, tx, bad))
	require.True(t, ok)

	// Not in the outbox before COMMIT, even for the transaction itself.
	var seen int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM audit_outbox`).Scan(&seen))
	require.Zero(t, seen)
	before = rt.n.Load()
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, before+1, rt.n.Load(), "the events and COMMIT are one round trip")
	require.Zero(t, rt.notices.Load(), "nothing was sent after the COMMIT")

	require.Equal(t, 2, countOutbox(t, pool))
	require.Equal(t, 1, countBusiness(t, pool))
	var actor string
	require.NoError(t, pool.QueryRow(ctx, `SELECT actor_email FROM audit_outbox ORDER BY pos LIMIT 1`).Scan(&actor))
	require.Equal(t, "user1@acme.io", actor)

	// Closed: every use is refused, a deferred Rollback included.
	require.ErrorIs(t, tx.Rollback(ctx), pgx.ErrTxClosed)
	require.ErrorIs(t, tx.Commit(ctx), pgx.ErrTxClosed)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('late')`)
	require.ErrorIs(t, err, pgx.ErrTxClosed)
	require.ErrorIs(t, tx.QueryRow(ctx, `SELECT 1`).Scan(new(int)), pgx.ErrTxClosed)
	require.ErrorIs(t, tx.SendBatch(ctx, &pgx.Batch{}).Close(), pgx.ErrTxClosed)
	require.ErrorIs(t, outbox.Record(ctx, tx, sampleEvent(4)), pgx.ErrTxClosed)
	require.Nil(t, tx.Conn())
	require.Equal(t, 2, countOutbox(t, pool))
	require.Equal(t, 1, countBusiness(t, pool))

	// Without events, Commit is a plain COMMIT.
	require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO business VALUES ('b')`)
		return err
	}))
	require.Equal(t, 2, countBusiness(t, pool))
}

// TestTxRollbackDropsEvents: rolled back, by the caller or by BeginFunc on
// an error, nothing of the transaction is written.
func TestTxRollbackDropsEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	tx, err := outbox.Begin(ctx, pool)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('a')`)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, tx.Rollback(ctx))

	failed := errors.New("the business change failed")
	err = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := outbox.Record(ctx, tx, sampleEvent(2)); err != nil {
			return err
		}
		return failed
	})
	require.ErrorIs(t, err, failed)
	require.Zero(t, countOutbox(t, pool))
	require.Zero(t, countBusiness(t, pool))
	require.Equal(t, int32(0), pool.Stat().AcquiredConns(), "connections went back to the pool")
}

// TestTxSavepointWritesAtOnce: a Record in a savepoint of an outbox.Tx is
// sent at once, so rolling the savepoint back drops it, and releasing it
// keeps it.
func TestTxSavepointWritesAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)

	require.NoError(t, outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
		sp, err := tx.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, outbox.Record(ctx, sp, sampleEvent(2)))
		require.NoError(t, sp.Rollback(ctx))
		sp, err = tx.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, outbox.Record(ctx, sp, sampleEvent(3)))
		return sp.Commit(ctx)
	}))
	rows, err := pool.Query(ctx, `SELECT request_id FROM audit_outbox ORDER BY request_id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"req_1", "req_3"}, got)
}

// TestTxRefusedAtCommit: when the database refuses an event's INSERT, or
// the COMMIT itself fails, Commit fails, nothing of the transaction is
// kept, and the connection goes back clean.
func TestTxRefusedAtCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	_, err := pool.Exec(ctx, `
ALTER TABLE audit_outbox ADD CONSTRAINT refuse_ws CHECK (workspace_id <> 'ws_refused');
CREATE TABLE deferred (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)`)
	require.NoError(t, err)

	refused := sampleEvent(1)
	refused.WorkspaceID = "ws_refused"
	err = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO business VALUES ('a')`); err != nil {
			return err
		}
		if err := outbox.Record(ctx, tx, sampleEvent(2)); err != nil {
			return err
		}
		return outbox.Record(ctx, tx, refused)
	})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23514", pgErr.Code, "%v", err)
	require.ErrorContains(t, err, "writing 2 audit events to outbox")

	// A COMMIT that fails (a deferred unique check) keeps no event either.
	err = outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO deferred VALUES (1), (1)`); err != nil {
			return err
		}
		return outbox.Record(ctx, tx, sampleEvent(3))
	})
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23505", pgErr.Code, "%v", err)

	require.Zero(t, countOutbox(t, pool))
	require.Zero(t, countBusiness(t, pool))

	// On a connection the caller keeps, the failed transaction is ended.
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	tx, err := outbox.BeginOn(ctx, conn.Conn())
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, refused))
	require.Error(t, tx.Commit(ctx))
	require.Equal(t, byte('I'), conn.Conn().PgConn().TxStatus(), "no transaction left open")
	_, err = conn.Exec(ctx, `INSERT INTO business VALUES ('after')`)
	require.NoError(t, err)
	require.Equal(t, 1, countBusiness(t, pool))
	require.Zero(t, countOutbox(t, pool))
}

// TestTxCommitOfAbortedTransaction: a transaction whose statement failed
// cannot commit, with or without events, as with pgx.
func TestTxCommitOfAbortedTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := txPool(t)
	for _, events := range []int{0, 1} {
		tx, err := outbox.Begin(ctx, pool)
		require.NoError(t, err)
		for range events {
			require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
		}
		_, err = tx.Exec(ctx, `INSERT INTO business VALUES ('a')`)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `SELECT 1/0`)
		require.Error(t, err)
		require.Error(t, tx.Commit(ctx), "events=%d", events)
	}
	require.Zero(t, countOutbox(t, pool))
	require.Zero(t, countBusiness(t, pool))
	require.Equal(t, int32(0), pool.Stat().AcquiredConns())
}
