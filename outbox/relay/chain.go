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
	// prev and hash are the row's links, set by chain; NULL without the
	// chain.
	prev, hash byteaCol
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

// chained are the claimed rows to store, numbered and linked. It is the
// pgx.CopyFromSource of their copy into audit_events (eventColumns).
type chained struct {
	rows []claimedRow
	// idx are the indexes into rows of the events to store, in seq order;
	// idx[i] gets seq firstSeq+i.
	idx      []int
	firstSeq int64
	// next is the copy's cursor: idx[next-1] is the current row.
	next int
	// workspaces are the batch's workspaces, numbered by claimedRow.ws,
	// and heads their newest links (seq 0: none stored); empty without
	// the chain.
	workspaces []string
	heads      []chainHead

	// The current row's seq and the row Values returns, reused: pgx
	// encodes a row before asking for the next.
	seq  pgtype.Int8
	vals []any
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
	c.seq = pgtype.Int8{Int64: c.firstSeq + int64(i), Valid: true}
	c.vals = append(c.vals[:0], &c.seq, &r.id, &r.workspaceID, &r.occurredAt, &r.recordedAt, &r.action, &r.actorType,
		&r.actorID, &r.actorEmail, &r.actorName, &r.resourceType, &r.resourceIDs,
		&r.flat, &r.source, &r.ip, &r.userAgent, &r.requestID, &r.details,
		&r.prev, &r.hash)
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

// chainState is where a move's events go on from: the last seq reserved
// before them and the head of every chain they extend. A move started from
// the database reads both under the audit_seq lock (newChainState); a move
// launched while the previous one is still in flight (pipeline.go) goes on
// from where that one will end, which its finish checks.
type chainState struct {
	lastSeq int64
	// heads are the chains' heads as ch moves them on; read records the
	// workspaces whose head has been read from the database (a workspace
	// without events has no head to read). Both nil without the chain.
	heads map[string][]byte
	read  map[string]bool
	ch    *integrity.Chainer
}

// newChainState starts at lastSeq with no head read yet.
func (r *Relay) newChainState(lastSeq int64) *chainState {
	st := &chainState{lastSeq: lastSeq}
	if !r.cfg.WithoutChain {
		st.heads, st.read = map[string][]byte{}, map[string]bool{}
		st.ch = integrity.NewChainer(st.heads)
	}
	return st
}

// eventKey is the idempotency key of an event.
type eventKey struct {
	workspace string
	occurred  time.Time
	id        [16]byte
}

// chain prepares the claimed rows (in pos order) for their copy: numbers
// them from st.lastSeq+1 on and links each onto its workspace's chain,
// hash = SHA-256(prev_hash || canonical bytes) (package integrity), reading
// the heads of workspaces st has not seen from the database. st then stands
// where the move will end. With dedupe, events already stored, and repeats
// of an event within the batch after its first, are left out. With
// Config.WithoutChain the rows are only numbered.
//
// The hashing is done here rather than as the copy reads the rows, so that
// the next move of a pipeline can be chained while this one is copied.
func (r *Relay) chain(ctx context.Context, tx pgx.Tx, rows []claimedRow, st *chainState, dedupe bool) (*chained, error) {
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

	c := &chained{rows: rows, idx: make([]int, 0, len(rows)-len(skip)), firstSeq: st.lastSeq + 1}
	for i := range rows {
		if !skip[rows[i].pos] {
			c.idx = append(c.idx, i)
		}
	}
	// The counter advances by every claimed row; a left-out row's seq
	// stays unused.
	st.lastSeq += int64(len(rows))
	if st.ch == nil {
		return c, nil
	}
	number := map[string]int{}
	var unread []string
	for i := range rows {
		ws := rows[i].workspaceID.String
		n, ok := number[ws]
		if !ok {
			n = len(c.workspaces)
			number[ws] = n
			c.workspaces = append(c.workspaces, ws)
			if !st.read[ws] {
				unread = append(unread, ws)
			}
		}
		rows[i].ws = n
	}
	if len(unread) > 0 {
		if err := readHeads(ctx, tx, unread, st); err != nil {
			return nil, err
		}
	}
	c.heads = make([]chainHead, len(c.workspaces))
	var f integrity.EventFields
	for i, k := range c.idx {
		row := &rows[k]
		row.fields(&f)
		prev, hash := st.ch.Next(&f)
		row.prev, row.hash = prev, hash
		c.heads[row.ws] = chainHead{seq: c.firstSeq + int64(i), hash: hash}
	}
	return c, nil
}

// readHeads reads the chain heads of workspaces into st.heads and marks
// them read. The map's keys are workspaces' strings and the hashes share
// one block, so a head allocates nothing of its own.
func readHeads(ctx context.Context, tx pgx.Tx, workspaces []string, st *chainState) error {
	hr, err := tx.Query(ctx, chainHeadsSQL, textArray(workspaces))
	if err != nil {
		return fmt.Errorf("reading chain heads: %w", err)
	}
	defer hr.Close()
	asked := make(map[string]int, len(workspaces))
	for i, ws := range workspaces {
		asked[ws] = i
	}
	block := make([]byte, 0, len(workspaces)*integrity.HashSize)
	var ws, hash rawCol
	dest := []any{&ws, &hash} // built once: a variadic call builds one a row
	for hr.Next() {
		if err := hr.Scan(dest...); err != nil {
			return fmt.Errorf("reading chain heads: %w", err)
		}
		i, ok := asked[string(ws)]
		if !ok {
			return fmt.Errorf("reading chain heads: got workspace %q, not asked for", ws)
		}
		start := len(block)
		block = append(block, hash...)
		st.heads[workspaces[i]] = block[start:len(block):len(block)]
	}
	if err := hr.Err(); err != nil {
		return fmt.Errorf("reading chain heads: %w", err)
	}
	for _, ws := range workspaces {
		st.read[ws] = true
	}
	return nil
}
