package outbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

const (
	// The business table of the Queue tests: ticket 1 starts open.
	createQueueTicketsSQL = `CREATE TABLE queue_tickets (id bigint PRIMARY KEY, status text NOT NULL);
		INSERT INTO queue_tickets VALUES (1, 'open')`
	updateQueueTicketSQL = `UPDATE queue_tickets SET status = $2 WHERE id = $1`
	queueTicketStatusSQL = `SELECT status FROM queue_tickets WHERE id = 1`
	// storedOutboxRowsSQL is every stored column but the position, in
	// insertion order.
	storedOutboxRowsSQL = `SELECT (to_jsonb(o) - 'pos')::text FROM audit_outbox o ORDER BY pos`
	// refuseOutboxSQL makes the database refuse every outbox insert.
	refuseOutboxSQL = `
CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outbox refused by test';
END $$;
CREATE TRIGGER refuse_outbox BEFORE INSERT ON audit_outbox
    FOR EACH ROW EXECUTE FUNCTION refuse_outbox()`
)

// queueSetup returns a fresh database with queue_tickets, and a Recorder
// whose clock is fixed so that two recordings of one event store equal rows.
func queueSetup(t *testing.T) (*pgxpool.Pool, *outbox.Recorder) {
	t.Helper()
	pool := testdb.New(t)
	_, err := pool.Exec(context.Background(), createQueueTicketsSQL)
	require.NoError(t, err)
	now := time.Now().Add(-time.Minute)
	rec, err := outbox.New(outbox.Options{Now: func() time.Time { return now }})
	require.NoError(t, err)
	return pool, rec
}

// storedRows returns the outbox rows as JSON, in insertion order.
func storedRows(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), storedOutboxRowsSQL)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// ticketStatus returns the status of ticket 1.
func ticketStatus(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var s string
	require.NoError(t, pool.QueryRow(context.Background(), queueTicketStatusSQL).Scan(&s))
	return s
}

// sendQueued sends the business UPDATE and es, queued with rec, in one batch
// inside one transaction, and commits.
func sendQueued(ctx context.Context, pool *pgxpool.Pool, rec *outbox.Recorder, status string, es ...outbox.Event) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(updateQueueTicketSQL, 1, status)
		for _, e := range es {
			if err := rec.Queue(ctx, b, e); err != nil {
				return err
			}
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

// TestQueueStoresWhatRecordStores queues two different events into one
// batch with a business statement: on commit both are stored, each exactly
// as Record stores it (every column compared). Two events in one batch also
// prove that each queued INSERT keeps argument values of its own.
func TestQueueStoresWhatRecordStores(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, rec := queueSetup(t)
	e1, e2 := sampleEvent(1), sampleEvent(2)
	e1.ID = "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e01"
	e2.ID = "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e02"
	e2.IP = "" // a NULL column in one of the two rows
	e2.Details = nil

	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := rec.Record(ctx, tx, e1); err != nil {
			return err
		}
		return rec.Record(ctx, tx, e2)
	}))
	recorded := storedRows(t, pool)
	require.Len(t, recorded, 2)
	require.NotEqual(t, recorded[0], recorded[1])

	require.NoError(t, sendQueued(ctx, pool, rec, "closed", e1, e2))
	require.Equal(t, "closed", ticketStatus(t, pool))
	all := storedRows(t, pool)
	require.Len(t, all, 4)
	require.Equal(t, recorded[0], all[2], "first queued event")
	require.Equal(t, recorded[1], all[3], "second queued event")
}

// TestQueueRollbackStoresNothing: a queued event that was sent goes with a
// rolled-back transaction, and one never sent is never written.
func TestQueueRollbackStoresNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := queueSetup(t)

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	b := &pgx.Batch{}
	b.Queue(updateQueueTicketSQL, 1, "closed")
	require.NoError(t, outbox.Queue(ctx, b, sampleEvent(1)))
	require.Equal(t, 2, b.Len())
	require.NoError(t, tx.SendBatch(ctx, b).Close())
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, 0, countOutbox(t, pool))
	require.Equal(t, "open", ticketStatus(t, pool))

	// Queued, but the batch is not sent: the commit writes nothing.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return outbox.Queue(ctx, &pgx.Batch{}, sampleEvent(2))
	}))
	require.Equal(t, 0, countOutbox(t, pool))
}

// TestQueueInvalidEvent: an invalid event gives the same *ValidationError as
// Record, and the batch is left as it was and still usable.
func TestQueueInvalidEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, rec := queueSetup(t)
	for name, spoil := range map[string]func(e *outbox.Event){
		"action":       func(e *outbox.Event) { e.Action = "Nope" },
		"source":       func(e *outbox.Event) { e.Source = "bad source" },
		"workspace_id": func(e *outbox.Event) { e.WorkspaceID = "" },
		"ip":           func(e *outbox.Event) { e.IP = "not an address" },
		"id":           func(e *outbox.Event) { e.ID = "42" },
	} {
		bad := sampleEvent(1)
		spoil(&bad)

		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		recordErr := rec.Record(ctx, tx, bad)
		require.NoError(t, tx.Rollback(ctx))
		want, ok := outbox.AsValidationError(recordErr)
		require.True(t, ok, "%s: Record gave %v", name, recordErr)

		b := &pgx.Batch{}
		b.Queue(updateQueueTicketSQL, 1, "closed")
		err = rec.Queue(ctx, b, bad)
		got, ok := outbox.AsValidationError(err)
		require.True(t, ok, "%s: Queue gave %v", name, err)
		require.Equal(t, want, got, name)
		require.Equal(t, recordErr.Error(), err.Error(), name)
		require.Equal(t, 1, b.Len(), "%s: batch untouched", name)
	}

	// The batch of the business statement is still sent and committed.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(updateQueueTicketSQL, 1, "closed")
		bad := sampleEvent(1)
		bad.Action = "Nope"
		if err := rec.Queue(ctx, b, bad); err == nil {
			return errors.New("an invalid event was queued")
		}
		return tx.SendBatch(ctx, b).Close()
	}))
	require.Equal(t, "closed", ticketStatus(t, pool))
	require.Equal(t, 0, countOutbox(t, pool))
}

// TestQueueMergesContext: fields the event leaves unset come from the
// context (here restored from a job payload, as a background job does),
// fields it sets win, and the row is the one Record stores.
func TestQueueMergesContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, rec := queueSetup(t)
	reqCtx := outbox.WithActor(ctx, outbox.Actor{Type: "user", ID: "u_42", Email: "alice@acme.io", Name: "Alice"})
	reqCtx = outbox.WithRequestInfo(reqCtx, outbox.RequestInfo{
		WorkspaceID: "ws_ctx", Source: "web", IP: "198.51.100.4", UserAgent: "ua/1", RequestID: "req_ctx",
	})
	payload, err := outbox.Capture(reqCtx)
	require.NoError(t, err)
	jobCtx, err := outbox.Restore(ctx, payload)
	require.NoError(t, err)

	bare := outbox.Event{
		ID:       "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e11",
		Action:   "ticket.close",
		Resource: outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": "t_1"}},
	}
	own := bare
	own.ID = "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e12"
	own.Source = "api"

	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := rec.Record(jobCtx, tx, bare); err != nil {
			return err
		}
		return rec.Record(jobCtx, tx, own)
	}))
	require.NoError(t, sendQueued(jobCtx, pool, rec, "closed", bare, own))
	all := storedRows(t, pool)
	require.Len(t, all, 4)
	require.Equal(t, all[:2], all[2:], "queued rows equal recorded rows")

	type merged struct{ ws, actorType, actorID, email, name, source, ip, ua, reqID string }
	rows, err := pool.Query(ctx, `SELECT workspace_id, actor_type, actor_id, actor_email, actor_name, source,
		host(ip), user_agent, request_id FROM audit_outbox ORDER BY pos OFFSET 2`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (merged, error) {
		var m merged
		err := r.Scan(&m.ws, &m.actorType, &m.actorID, &m.email, &m.name, &m.source, &m.ip, &m.ua, &m.reqID)
		return m, err
	})
	require.NoError(t, err)
	fromCtx := merged{"ws_ctx", "user", "u_42", "alice@acme.io", "Alice", "web", "198.51.100.4", "ua/1", "req_ctx"}
	ownSource := fromCtx
	ownSource.source = "api"
	require.Equal(t, []merged{fromCtx, ownSource}, got)
}

// TestQueueRefusedInsertSurfacesFromBatch: when the database refuses the
// INSERT (a trigger in this test's database raises), the error comes out of
// the batch results, read one by one or by Close, the transaction cannot
// commit, and nothing of it stays.
func TestQueueRefusedInsertSurfacesFromBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, rec := queueSetup(t)
	_, err := pool.Exec(ctx, refuseOutboxSQL)
	require.NoError(t, err)

	t.Run("close", func(t *testing.T) {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		b := &pgx.Batch{}
		b.Queue(updateQueueTicketSQL, 1, "closed")
		require.NoError(t, rec.Queue(ctx, b, sampleEvent(1)))
		err = tx.SendBatch(ctx, b).Close()
		require.ErrorContains(t, err, "writing audit event to outbox")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "outbox refused by test", pgErr.Message)
		require.ErrorIs(t, tx.Commit(ctx), pgx.ErrTxCommitRollback, "the aborted transaction cannot commit")
	})

	t.Run("exec", func(t *testing.T) {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		b := &pgx.Batch{}
		b.Queue(updateQueueTicketSQL, 1, "closed")
		require.NoError(t, rec.Queue(ctx, b, sampleEvent(2)))
		br := tx.SendBatch(ctx, b)
		_, err = br.Exec()
		require.NoError(t, err, "the business statement")
		_, err = br.Exec()
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, "the event's INSERT")
		require.Equal(t, "outbox refused by test", pgErr.Message)
		require.Error(t, br.Close())
		require.NoError(t, tx.Rollback(ctx))
	})

	require.Equal(t, "open", ticketStatus(t, pool))
	require.Equal(t, 0, countOutbox(t, pool))
}

func TestQueueNeedsBatch(t *testing.T) {
	t.Parallel()
	rec, err := outbox.New(outbox.Options{})
	require.NoError(t, err)
	require.Error(t, rec.Queue(context.Background(), nil, sampleEvent(1)))
	require.Error(t, outbox.Queue(context.Background(), nil, sampleEvent(1)))
}
