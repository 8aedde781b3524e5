// Package outbox is where an audit event is born: in-app modules call Record or
// RecordBatch inside the same pgx.Tx as their business change (or Queue the
// event into the pgx.Batch that carries the change), so the event exists
// exactly when the change commits. The relay (package outbox/relay)
// later moves the rows into the partitioned audit_events store.
//
// # Recording
//
//	err := outbox.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, closeTicketSQL, id); err != nil {
//			return err
//		}
//		return outbox.Record(ctx, tx, outbox.Event{
//			WorkspaceID: "ws_acme",
//			Action:      "ticket.close",
//			Resource:    outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": id}},
//		})
//	})
//
// Record works in any pgx.Tx; in a Tx (BeginFunc, Begin) its INSERT is sent
// with the COMMIT, so recording costs no round trip of its own.
//
// # Normalisation
//
// Every event is validated and normalised once, at record time, into the
// deterministic forms the contract promises: timestamps in UTC truncated to
// milliseconds, details as RFC 8785 canonical JSON, resource ids as canonical
// JSON plus their flattened "key=value;..." form. The read path only formats
// what is stored. Bad input is refused with a *ValidationError naming the field;
// nothing is silently dropped or invented.
//
// # Context
//
// Actor, source, IP, user agent and request id not set on the event are taken
// from the context (WithActor, WithRequestInfo). Capture serialises those into
// bytes a background job keeps in its payload; Restore puts them back on every
// retry, so a delayed job's events name the user who started it.
//
// The package-level Record, RecordBatch and Queue use the Recorder installed with
// SetDefault (the application does this at start-up), or one with default
// Options.
package outbox
