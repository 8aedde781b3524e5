package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// claimedRow is one claimed outbox row, scanned into the values its copy
// into audit_events hands pgx (columns.go), plus what the chain needs.
type claimedRow struct {
	pos                    int64
	id                     pgtype.UUID
	occurredAt, recordedAt pgtype.Timestamptz
	workspaceID, action    pgtype.Text
	actorType, actorID     pgtype.Text
	actorEmail, actorName  pgtype.Text
	resourceType           pgtype.Text
	resourceIDs, flat      pgtype.Text // resource_ids, resource_ids_flat
	source, userAgent      pgtype.Text
	requestID, details     pgtype.Text
	ip                     inetCol
	// host is host(ip), the address as the canonical bytes show it.
	host pgtype.Text
	// ws numbers the row's workspace within the batch (chained.heads).
	ws int
}

// fields sets f to r as the canonical bytes need it. f's optional fields
// point into r.
func (r *claimedRow) fields(f *integrity.EventFields) {
	*f = integrity.EventFields{
		ID: r.id.Bytes, WorkspaceID: r.workspaceID.String,
		OccurredAt: r.occurredAt.Time, RecordedAt: r.recordedAt.Time,
		Action: r.action.String, ActorType: r.actorType.String,
		ActorID: optional(&r.actorID), ActorEmail: optional(&r.actorEmail), ActorName: optional(&r.actorName),
		ResourceType: optional(&r.resourceType), ResourceIDs: optional(&r.resourceIDs),
		Source: r.source.String, IP: optional(&r.host),
		UserAgent: optional(&r.userAgent), RequestID: optional(&r.requestID), Details: optional(&r.details),
	}
}

// optional returns a pointer to t's string, nil for NULL.
func optional(t *pgtype.Text) *string {
	if !t.Valid {
		return nil
	}
	return &t.String
}

// claimRows claims the head of the outbox after pos from (positions nil, up
// to limit rows) or the given positions, and returns the rows in pos order.
func claimRows(ctx context.Context, tx pgx.Tx, positions []int64, limit int, from int64) ([]claimedRow, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if positions == nil {
		rows, err = tx.Query(ctx, claimHeadRowsSQL, limit, from)
	} else {
		rows, err = tx.Query(ctx, claimPositionsRowsSQL, positions)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming outbox rows: %w", err)
	}
	defer rows.Close()
	// Grown as rows arrive: an idle relay polls every PollInterval and
	// mostly finds a few rows, where a BatchSize-long slice (~470 bytes a
	// row) would be garbage at once.
	out := make([]claimedRow, 0, min(limit, 64))
	sc := newRowScanner()
	for rows.Next() {
		if err := rows.Scan(sc.dest...); err != nil {
			return nil, fmt.Errorf("claiming outbox rows: %w", err)
		}
		sc.finish()
		out = append(out, sc.row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claiming outbox rows: %w", err)
	}
	return out, nil
}

// chained are the claimed rows to store, numbered. It is the
// pgx.CopyFromSource of their copy into audit_events (eventColumns), and
// links each row onto its workspace's chain as the copy reads it: pgx reads
// the source in a goroutine of its own while the server stores the rows
// already sent, so hashing overlaps the insert rather than preceding it.
type chained struct {
	rows []claimedRow
	// idx are the indexes into rows of the events to store, in seq order;
	// idx[i] gets seq firstSeq+i.
	idx      []int
	firstSeq int64
	// ch links the rows; nil with Config.WithoutChain, whose rows are
	// stored without links.
	ch *integrity.Chainer
	// next is the copy's cursor: idx[next-1] is the current row.
	next int
	// workspaces are the batch's workspaces, numbered by claimedRow.ws,
	// and heads their newest links so far (seq 0: none stored); a slice
	// rather than a map keyed by workspace, written for every row.
	workspaces []string
	heads      []chainHead

	// The current row's values besides the claimed row's own, and the row
	// Values returns, all reused: pgx encodes a row before asking for the
	// next.
	seq        pgtype.Int8
	prev, hash byteaCol // NULL without the chain
	f          integrity.EventFields
	vals       []any
}

// chainHead is the newest link of a workspace's chain.
type chainHead struct {
	seq  int64
	hash []byte
}

var _ pgx.CopyFromSource = (*chained)(nil)

// Next implements pgx.CopyFromSource.
func (c *chained) Next() bool {
	c.next++
	return c.next <= len(c.idx)
}

// Values implements pgx.CopyFromSource. Every value is a pointer, to the
// claimed row or to c, so building the row allocates nothing.
func (c *chained) Values() ([]any, error) {
	i := c.next - 1
	r := &c.rows[c.idx[i]]
	seq := c.firstSeq + int64(i)
	c.seq = pgtype.Int8{Int64: seq, Valid: true}
	if c.ch != nil {
		r.fields(&c.f)
		prev, hash := c.ch.Next(&c.f)
		c.prev, c.hash = prev, hash
		c.heads[r.ws] = chainHead{seq: seq, hash: hash}
	}
	c.vals = append(c.vals[:0], &c.seq, &r.id, &r.workspaceID, &r.occurredAt, &r.recordedAt, &r.action, &r.actorType,
		&r.actorID, &r.actorEmail, &r.actorName, &r.resourceType, &r.resourceIDs,
		&r.flat, &r.source, &r.ip, &r.userAgent, &r.requestID, &r.details,
		&c.prev, &c.hash)
	return c.vals, nil
}

// Err implements pgx.CopyFromSource.
func (c *chained) Err() error { return nil }

// newHeads returns the chain heads after the copy, as finishMoveSQL's
// arrays; empty without the chain.
func (c *chained) newHeads() (ws []string, seq []int64, hash [][]byte) {
	for w, h := range c.heads {
		if h.seq == 0 {
			continue // no event of the workspace stored
		}
		ws = append(ws, c.workspaces[w])
		seq = append(seq, h.seq)
		hash = append(hash, h.hash)
	}
	return ws, seq, hash
}

// eventKey is the idempotency key of an event.
type eventKey struct {
	workspace string
	occurred  time.Time
	id        [16]byte
}

// chain prepares the claimed rows (in pos order) for their copy, which
// numbers them from lastSeq+1 on and links them onto their workspaces'
// chains: hash = SHA-256(prev_hash || canonical bytes) (package integrity).
// With dedupe, events already stored, and repeats of an event within the
// batch after its first, are left out. The caller holds the audit_seq lock,
// so the heads read here are current. With Config.WithoutChain the rows are
// only numbered.
func (r *Relay) chain(ctx context.Context, tx pgx.Tx, rows []claimedRow, lastSeq int64, dedupe bool) (*chained, error) {
	skip := map[int64]bool{}
	if dedupe {
		positions := make([]int64, len(rows))
		for i := range rows {
			positions[i] = rows[i].pos
		}
		dup, err := tx.Query(ctx, storedAlreadySQL, positions)
		if err != nil {
			return nil, fmt.Errorf("looking for events already stored: %w", err)
		}
		stored, err := pgx.CollectRows(dup, pgx.RowTo[int64])
		if err != nil {
			return nil, fmt.Errorf("looking for events already stored: %w", err)
		}
		for _, p := range stored {
			skip[p] = true
		}
		seen := map[eventKey]bool{}
		for i := range rows {
			row := &rows[i]
			k := eventKey{row.workspaceID.String, row.occurredAt.Time.UTC(), row.id.Bytes}
			if seen[k] {
				skip[rows[i].pos] = true
			}
			seen[k] = true
		}
	}

	c := &chained{rows: rows, idx: make([]int, 0, len(rows)-len(skip)), firstSeq: lastSeq + 1}
	for i := range rows {
		if !skip[rows[i].pos] {
			c.idx = append(c.idx, i)
		}
	}
	if r.cfg.WithoutChain {
		return c, nil
	}
	number := map[string]int{}
	for i := range rows {
		ws := rows[i].workspaceID.String
		n, ok := number[ws]
		if !ok {
			n = len(c.workspaces)
			number[ws] = n
			c.workspaces = append(c.workspaces, ws)
		}
		rows[i].ws = n
	}
	heads, err := r.chainHeads(ctx, tx, c.workspaces, number)
	if err != nil {
		return nil, err
	}
	c.ch = integrity.NewChainer(heads)
	c.heads = make([]chainHead, len(c.workspaces))
	return c, nil
}

// chainHeads reads the chain heads of workspaces, numbered by number. The
// map's keys are workspaces' strings and its hashes share one block, so
// reading a head allocates nothing of its own.
func (r *Relay) chainHeads(ctx context.Context, tx pgx.Tx, workspaces []string, number map[string]int) (map[string][]byte, error) {
	hr, err := tx.Query(ctx, chainHeadsSQL, textArray(workspaces))
	if err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	defer hr.Close()
	heads := make(map[string][]byte, len(workspaces))
	block := make([]byte, 0, len(workspaces)*integrity.HashSize)
	var ws, hash rawCol
	dest := []any{&ws, &hash} // built once: a variadic call builds one a row
	for hr.Next() {
		if err := hr.Scan(dest...); err != nil {
			return nil, fmt.Errorf("reading chain heads: %w", err)
		}
		n, ok := number[string(ws)]
		if !ok {
			return nil, fmt.Errorf("reading chain heads: got workspace %q, not asked for", ws)
		}
		start := len(block)
		block = append(block, hash...)
		heads[workspaces[n]] = block[start:len(block):len(block)]
	}
	if err := hr.Err(); err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	return heads, nil
}
