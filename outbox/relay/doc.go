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
// One Relay runs one loop goroutine, and one more for each move whose rows
// are being copied. Several processes (or several Relays) may run
// against the same database at once: they share the work through
// FOR UPDATE SKIP LOCKED and never move a row twice. One relay per database
// moves a backlog fastest (see "Two moves in flight").
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
//     uncommitted business transactions are invisible; rows claimed by another
//     relay are skipped). While a backlog drains, the cursor is the
//     last pos of the previous full batch, so a claim does not walk the
//     dead index entries of every row moved before it (which an old
//     snapshot anywhere keeps from being skipped cheaply); a partial batch,
//     a failure and every 64th move claim from the head again (cursor 0),
//     which picks up rows committed late under a lower pos;
//  2. take the audit_seq row lock and read the last seq (SELECT ... FOR
//     UPDATE), so what follows sees every earlier move, then read the chain
//     heads of the batch's workspaces;
//  3. number the rows (seq = last seq + 1, 2, ... in pos order) and link
//     each onto its workspace's hash chain: hash = SHA-256(prev_hash ||
//     canonical bytes), package integrity;
//  4. copy them into audit_events (COPY ... FROM STDIN, binary, which
//     inserts into each partition many rows at a time; PERFORMANCE.md, run
//     H);
//  5. in one statement: advance the counter by n, delete the claimed rows
//     from the outbox and write the new chain heads;
//  6. commit.
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
// # Two moves in flight
//
// While a backlog drains (batches come full), the relay keeps two moves in
// flight on two connections of its pool: the next batch is claimed,
// numbered, linked and copied while the previous one is still being copied,
// finished and committed. The server then works on two copies at once, and
// a commit's WAL flush overlaps the next copy; on two cores this moves a
// backlog about 1.6 times as fast as one move at a time (PERFORMANCE.md, run
// N).
//
// The second move goes on from where the first will end: its seq numbers
// follow the first's, and its links follow the first's new chain heads. It
// skips step 2 and takes the counter lock only in its finish (step 5), once
// the first has committed, without waiting (NOWAIT), and checks that the
// counter stands where the first left it. If another relay's move holds the
// counter or committed in between, the numbers and links are wrong: the
// move is rolled back (Stats.Conflicts and auditlog_relay_conflicts_total
// count these) and its rows go to the next move, which starts from step 2
// again. So the guarantees above hold whatever other relays do. After a
// conflict the relay moves one batch at a time for 10 seconds, so that
// relays competing for one outbox do not keep rolling back copies (dead
// rows and WAL in audit_events).
//
// A move never waits for the one launched after it, which would close a
// cycle PostgreSQL cannot see (the later move's backend sits idle until the
// earlier lands). A move launched ahead waits for no lock longer than a
// second (lock_timeout): if one is held, or queued for, say by a
// migration's ALTER TABLE waiting behind the move in flight, it gives way,
// is rolled back (Stats.GaveWay and auditlog_relay_gave_way_total count
// these, with the stalls below).
// The first move of a pipeline already holds every lock its finish needs.
// And if the earlier move's copy has not returned within a second (or three
// times the last copy's duration, for batches that copy for longer) and its
// backend waits for a lock, that may be a row the later move inserted (a
// resent event with one row in each batch, directly or through another
// relay's move), so the later move is rolled back; a copy that is only slow
// is waited for. After either, too, the relay moves one batch at a time for
// 10 seconds.
//
// When a move fails, the move after it is rolled back too, and the failed
// one is dealt with as below. Without a second connection to spare (a pool
// of one, or none idle within 20ms) moves go one at a time. Stop lets the
// older move in flight commit and rolls the newer one back.
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
// auditlog_relay_errors_total, auditlog_relay_dead_letters_total,
// auditlog_relay_conflicts_total (Stats.Conflicts),
// auditlog_relay_gave_way_total (Stats.GaveWay), the
// auditlog_relay_batch_seconds histogram, and a collector reporting
// auditlog_outbox_depth, auditlog_outbox_oldest_age_seconds and
// auditlog_dead_letters (rows now in audit_dead_letters). The collector runs
// one query per scrape, SELECT count(*), min(recorded_at) FROM audit_outbox
// plus a count of audit_dead_letters: a scan of the outbox, cheap while the
// relay keeps up (the table holds seconds of events) but proportional to the
// backlog when it does not.
package relay
