package relay

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// claimedRow is one claimed outbox row: what the chain needs of it, and
// what is copied into audit_events besides.
type claimedRow struct {
	pos int64
	f   integrity.EventFields
	// flat is resource_ids_flat; ip the address as stored (f.IP is host()
	// of it, as the canonical bytes need it).
	flat string
	ip   *netip.Prefix
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
	out := make([]claimedRow, 0, limit)
	var id pgtype.UUID
	for rows.Next() {
		var c claimedRow
		f := &c.f
		if err := rows.Scan(&c.pos, &id, &f.WorkspaceID, &f.OccurredAt, &f.RecordedAt, &f.Action, &f.ActorType,
			&f.ActorID, &f.ActorEmail, &f.ActorName, &f.ResourceType, &f.ResourceIDs, &c.flat, &f.Source,
			&c.ip, &f.UserAgent, &f.RequestID, &f.Details, &f.IP); err != nil {
			return nil, fmt.Errorf("claiming outbox rows: %w", err)
		}
		f.ID = id.Bytes
		out = append(out, c)
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
	// vals is the row Values returns, reused: pgx encodes it before asking
	// for the next.
	vals []any
	// heads are each workspace's last event linked so far.
	heads map[string]chainHead
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

// Values implements pgx.CopyFromSource.
func (c *chained) Values() ([]any, error) {
	i := c.next - 1
	r := &c.rows[c.idx[i]]
	f := &r.f
	seq := c.firstSeq + int64(i)
	var prev, hash []byte // NULL without the chain
	if c.ch != nil {
		prev, hash = c.ch.Next(f)
		c.heads[f.WorkspaceID] = chainHead{seq: seq, hash: hash}
	}
	v := c.vals[:0]
	v = append(v, seq, pgtype.UUID{Bytes: f.ID, Valid: true}, f.WorkspaceID, f.OccurredAt, f.RecordedAt, f.Action, f.ActorType,
		f.ActorID, f.ActorEmail, f.ActorName, f.ResourceType, f.ResourceIDs,
		r.flat, f.Source, r.ip, f.UserAgent, f.RequestID, f.Details,
		prev, hash)
	c.vals = v
	return v, nil
}

// Err implements pgx.CopyFromSource.
func (c *chained) Err() error { return nil }

// newHeads returns the chain heads after the copy, as finishMoveSQL's
// arrays; empty without the chain.
func (c *chained) newHeads() (ws []string, seq []int64, hash [][]byte) {
	for w, h := range c.heads {
		ws = append(ws, w)
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
			f := &rows[i].f
			k := eventKey{f.WorkspaceID, f.OccurredAt.UTC(), f.ID}
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
	heads, err := r.chainHeads(ctx, tx, rows)
	if err != nil {
		return nil, err
	}
	c.ch = integrity.NewChainer(heads)
	c.heads = make(map[string]chainHead, len(heads))
	return c, nil
}

// chainHeads reads the chain heads of the rows' workspaces.
func (r *Relay) chainHeads(ctx context.Context, tx pgx.Tx, rows []claimedRow) (map[string][]byte, error) {
	var workspaces []string
	seen := map[string]bool{}
	for i := range rows {
		if ws := rows[i].f.WorkspaceID; !seen[ws] {
			seen[ws] = true
			workspaces = append(workspaces, ws)
		}
	}
	hr, err := tx.Query(ctx, chainHeadsSQL, workspaces)
	if err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	defer hr.Close()
	heads := make(map[string][]byte, len(workspaces))
	for hr.Next() {
		var (
			ws   string
			hash []byte
		)
		if err := hr.Scan(&ws, &hash); err != nil {
			return nil, fmt.Errorf("reading chain heads: %w", err)
		}
		heads[ws] = hash
	}
	if err := hr.Err(); err != nil {
		return nil, fmt.Errorf("reading chain heads: %w", err)
	}
	return heads, nil
}
