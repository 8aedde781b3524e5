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
//  1. claim up to BatchSize rows and read them: SELECT ... WHERE pos >
//     cursor ORDER BY pos LIMIT n FOR UPDATE SKIP LOCKED (rows of
//     uncommitted business transactions are invisible; rows claimed by
//     another relay are skipped). While a backlog drains, the cursor is the
//     last pos of the previous full batch, so a claim does not walk the
//     dead index entries of every row moved before it (which an old
//     snapshot anywhere keeps from being skipped cheaply); a partial batch,
//     a failure and every 64th move claim from the head again (cursor 0),
//     which picks up rows committed late under a lower pos;
//  2. take the audit_seq row lock and read the last seq (SELECT ... FOR
//     UPDATE), so what follows sees every earlier move, then read the chain
//     heads of the batch's workspaces;
//  3. copy the rows into audit_events (COPY ... FROM STDIN, binary), each
//     numbered (seq = last seq + 1, 2, ... in pos order) and linked onto
//     its workspace's hash chain as pgx encodes it: hash = SHA-256(prev_hash
//     || canonical bytes), package integrity. pgx encodes in a goroutine of
//     its own while the server stores the rows already sent, so the hashing
//     overlaps the insert, and COPY inserts into each partition many rows at
//     a time (PERFORMANCE.md, run H);
//  4. in one statement: advance the counter by n, delete the claimed rows
//     from the outbox and write the new chain heads;
//  5. commit.
//
// The counter row stays locked until commit, so the next move (by any relay)
// gets its range only after this one is visible: seq is strictly increasing
// in commit order, and a reader that has seen seq <= N has seen every event
// with seq <= N. Claiming happens before the lock, so relays overlap there.
// An event already stored (same workspace, occurred_at and id) is consumed
// and stored once, outside the chain; its reserved seq is left unused (gaps
// are allowed). Looking for such resends costs an index probe of every
// partition per row, and they are rare, so the copy lets the primary key
// notice one: on a unique violation the move is rolled back and done again
// with the resends looked up first and left out.
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
