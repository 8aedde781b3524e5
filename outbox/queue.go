package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Queue adds one event's INSERT to the caller's batch b, with the Recorder
// installed by SetDefault. See (*Recorder).Queue.
func Queue(ctx context.Context, b *pgx.Batch, e Event) error {
	return Default().Queue(ctx, b, e)
}

// Queue validates and normalises e exactly as Record does (context merged,
// same clock, same *ValidationError) and adds its INSERT into audit_outbox to
// the caller's batch b. It touches no connection: the event goes to the
// server with the caller's own statements when the caller sends b, in the
// same round trip, which saves the one Record spends on its INSERT.
//
// The event is only written if b is sent (tx.SendBatch) inside the
// transaction of the business change, and that transaction then commits: a
// batch that is never sent, or a transaction rolled back, records nothing.
// (Sent outside a transaction, the event would be written even if the
// change it describes is not.)
//
// On a validation error Queue returns it and leaves b as it was (b.Len()
// unchanged), so the caller can still send its own statements. The INSERT's
// own error, the database refusing the row, surfaces from the batch results:
// from BatchResults.Exec when the caller reads the results one by one (this
// INSERT's result comes after those of the statements queued before it), or
// from BatchResults.Close, wrapped as "writing audit event to outbox". Then
// the transaction is aborted and must be rolled back, as after any failed
// statement.
//
//	b := &pgx.Batch{}
//	b.Queue(closeTicketSQL, id)
//	if err := outbox.Queue(ctx, b, ev); err != nil {
//		return err
//	}
//	if err := tx.SendBatch(ctx, b).Close(); err != nil {
//		return err // the caller rolls tx back
//	}
//	return tx.Commit(ctx)
func (r *Recorder) Queue(ctx context.Context, b *pgx.Batch, e Event) error {
	if b == nil {
		return errors.New("outbox: Queue needs a batch")
	}
	w, err := r.normalise(fromContext(ctx, e), r.opts.Now())
	if err != nil {
		return err
	}
	// The batch keeps the arguments until it is sent, and a batch may hold
	// several events: every INSERT gets column values of its own, never a
	// buffer shared with another call.
	qq := b.Queue(insertOutboxSQL, newOutboxCols().load(&w)...)
	qq.Fn = func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("writing audit event to outbox: %w", err)
		}
		return nil
	}
	return nil
}
