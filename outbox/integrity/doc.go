// Package integrity makes the audit log tamper-evident and checks it.
//
// # The chain
//
// The relay gives every event it stores
//
//	hash = SHA-256(prev_hash || canonical bytes of the event)
//
// chained per workspace in seq order: prev_hash is the hash of the
// workspace's previous event, or 32 zero bytes ([Genesis]) for its first.
// The canonical bytes are the UTF-8 RFC 8785 form of the event object as the
// API returns it (contract §1: every key present, null when absent) without
// seq, hash and prev_hash. The relay computes the chain as it moves a batch
// ([Chainer], [AppendEventBytes]); the ndjson export renders the same bytes
// in SQL (audit_event_canonical, migration 00008); verification recomputes
// them from the export with an independent RFC 8785 implementation
// ([EventBytes]), so the three must agree byte for byte, which the tests
// check.
//
// # Checkpoints
//
// A [Checkpoint] states a workspace's chain head (seq, hash) at a time,
// signed with Ed25519: the signature covers the RFC 8785 form of the
// checkpoint's JSON object without "id" and "signature" ([Checkpoint.SignedBytes]).
// Checkpoints are made on a schedule, on demand, and when retention drops a
// partition; the last kind carries [Bridge]s over the stretches of the chain
// the drop removed, so what remains still verifies.
//
// # Verifying
//
// [Verify] reads events as NDJSON lines in seq order (the export format
// ndjson, which adds seq, hash and prev_hash to each event) and names the
// first break: an event whose content no longer matches its hash
// ("changed"), a link to an event that is not there ("missing"), an event
// that is not part of the chain ("inserted"), or events out of chain order
// ("reordered"); then it checks every checkpoint's signature and that the
// chain passes through its head.
package integrity
