// Package relay moves audit events from the transactional outbox
// (audit_outbox) into the partitioned store (audit_events), assigning each its
// seq.
//
// # Running
//
//	r, err := relay.New(pool, relay.Config{Partitions: maintainer, Logger: log, Registerer: reg})
//	if err != nil { ... }
//	if err := r.Start(ctx); err != nil { ... }
//	defer r.Stop(shutdownCtx) // finishes the batch in flight
//
// One Relay runs one goroutine. Several processes (or several Relays) may run
// against the same database at once: they share the work through
// FOR UPDATE SKIP LOCKED and never move a row twice.
//
// The loop moves a batch; a full batch is followed at once by the next, a
// partial one by a wait of Config.PollInterval or until Wake is called
// (the ingest API calls it after a commit, so events move within
// milliseconds). Wake-ups coalesce: many calls during a batch cause one more
// poll. There is no NOTIFY per event, since a NOTIFY serialises every
// committing transaction; other processes' events are found by the poll.
// Errors are logged and retried with a bounded exponential backoff (at most
// 5s), so the relay carries on by itself once the database is back.
//
// # One move
//
// A move is one transaction:
//
//  1. claim up to BatchSize rows: SELECT pos ... ORDER BY pos LIMIT n
//     FOR UPDATE SKIP LOCKED (rows of uncommitted business transactions are
//     invisible; rows claimed by another relay are skipped);
//  2. take the audit_seq row lock (SELECT ... FOR UPDATE), so the next
//     statement sees every earlier move;
//  3. in one statement: advance the counter by n, delete the claimed rows
//     from the outbox, skip events already stored (or repeated in the
//     batch), and insert the rest into audit_events with seq = the
//     reserved range in pos order and each workspace's hash chain extended
//     (prev_hash, hash; see package integrity), writing the new chain heads;
//  4. commit.
//
// The counter row stays locked until commit, so the next move (by any relay)
// gets its range only after this one is visible: seq is strictly increasing
// in commit order, and a reader that has seen seq <= N has seen every event
// with seq <= N. Claiming happens before the lock, so relays overlap there.
// An event already stored (same workspace, occurred_at and id) is consumed
// and stored once, outside the chain; its reserved seq is left unused (gaps
// are allowed).
//
// # Rows that cannot be stored
//
// When the insert fails because of the data (SQLSTATE classes 22, 23 and
// 54), the transaction is rolled back and the batch bisected, each half
// moved in its own transaction, until the failing rows are isolated; the
// good rows move. A row failing on its own because no partition holds its
// occurred_at is retried once after Config.Partitions.EnsureFor creates one.
// A row that still fails is copied to audit_dead_letters with the error text
// and deleted from the outbox, in one transaction, so it never stalls the
// rest. ListDeadLetters shows them; RetryDeadLetters and RetryAllDeadLetters
// put them back into the outbox (under their original pos) once the cause is
// fixed. Other errors (connection, timeout, cancellation) leave the batch in
// the outbox for the next attempt.
//
// # Metrics
//
// With Config.Registerer set the relay registers auditlog_relay_moved_total,
// auditlog_relay_errors_total, auditlog_relay_dead_letters_total, the
// auditlog_relay_batch_seconds histogram, and a collector reporting
// auditlog_outbox_depth, auditlog_outbox_oldest_age_seconds and
// auditlog_dead_letters (rows now in audit_dead_letters). The collector runs
// one query per scrape, SELECT count(*), min(recorded_at) FROM audit_outbox
// plus a count of audit_dead_letters: a scan of the outbox, cheap while the
// relay keeps up (the table holds seconds of events) but proportional to the
// backlog when it does not.
package relay
