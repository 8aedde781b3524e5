package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/auditlog/auditlog/outbox/integrity"
)

// claimedRow is one claimed outbox row, as the chain needs it.
type claimedRow struct {
	pos int64
	f   integrity.EventFields
}

// claimRows claims the head of the outbox (positions nil, up to limit rows)
// or the given positions, and returns the rows in pos order.
func claimRows(ctx context.Context, tx pgx.Tx, positions []int64, limit int) ([]claimedRow, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if positions == nil {
		rows, err = tx.Query(ctx, claimHeadRowsSQL, limit)
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
			&f.ActorID, &f.ActorEmail, &f.ActorName, &f.ResourceType, &f.ResourceIDs, &f.Source,
			&f.IP, &f.UserAgent, &f.RequestID, &f.Details); err != nil {
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

// claimPositions claims like claimRows but returns only the positions.
func claimPositions(ctx context.Context, tx pgx.Tx, positions []int64, limit int) (claimed []int64, err error) {
	if positions == nil {
		err = tx.QueryRow(ctx, claimHeadSQL, limit).Scan(&claimed)
	} else {
		err = tx.QueryRow(ctx, claimPositionsSQL, positions).Scan(&claimed)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming outbox rows: %w", err)
	}
	return claimed, nil
}

// chainArgs are moveSQL's arrays: the rows to store and their seq and links.
type chainArgs struct {
	pos, seq   []int64
	prev, hash [][]byte
}

// eventKey is the idempotency key of an event.
type eventKey struct {
	workspace string
	occurred  time.Time
	id        [16]byte
}

// chain numbers and links the claimed rows (in pos order) onto their
// workspaces' chains: seq from lastSeq+1 on, hash = SHA-256(prev_hash ||
// canonical bytes) (package integrity). With dedupe, events already stored,
// and repeats of an event within the batch after its first, are left out.
// The caller holds the audit_seq lock, so the heads read here are current.
func (r *Relay) chain(ctx context.Context, tx pgx.Tx, rows []claimedRow, lastSeq int64, dedupe bool) (chainArgs, error) {
	skip := map[int64]bool{}
	if dedupe {
		positions := make([]int64, len(rows))
		for i := range rows {
			positions[i] = rows[i].pos
		}
		dup, err := tx.Query(ctx, storedAlreadySQL, positions)
		if err != nil {
			return chainArgs{}, fmt.Errorf("looking for events already stored: %w", err)
		}
		stored, err := pgx.CollectRows(dup, pgx.RowTo[int64])
		if err != nil {
			return chainArgs{}, fmt.Errorf("looking for events already stored: %w", err)
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

	heads, err := r.chainHeads(ctx, tx, rows)
	if err != nil {
		return chainArgs{}, err
	}
	ch := integrity.NewChainer(heads)
	n := len(rows) - len(skip)
	c := chainArgs{pos: make([]int64, 0, n), seq: make([]int64, 0, n), prev: make([][]byte, 0, n), hash: make([][]byte, 0, n)}
	for i := range rows {
		if skip[rows[i].pos] {
			continue
		}
		prev, hash := ch.Next(&rows[i].f)
		c.pos = append(c.pos, rows[i].pos)
		c.seq = append(c.seq, lastSeq+int64(len(c.seq))+1)
		c.prev = append(c.prev, prev)
		c.hash = append(c.hash, hash)
	}
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
