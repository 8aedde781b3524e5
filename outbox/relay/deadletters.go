package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the dead-letter functions need: a *pgxpool.Pool, a *pgx.Conn or
// a pgx.Tx.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DeadLetter is an outbox row the relay could not store, with the reason.
type DeadLetter struct {
	// Pos is the row's outbox position; it keeps it when retried.
	Pos int64
	// FailedAt is when the row was set aside; Error why.
	FailedAt time.Time
	Error    string
	// Attempts is how many times the row has failed and been set aside:
	// 1 the first time; a retried row that fails again counts on (the
	// outbox row carries the count while it waits).
	Attempts int
	// The event's identity and what it was about.
	ID          string
	WorkspaceID string
	OccurredAt  time.Time
	RecordedAt  time.Time
	Action      string
	Source      string
}

// listDeadLettersSQL lists dead letters oldest first; $1 is the most to
// return, NULL for all.
const listDeadLettersSQL = `
SELECT pos, failed_at, error, attempts, id::text, workspace_id, occurred_at,
       recorded_at, action, source
FROM audit_dead_letters
ORDER BY pos
LIMIT $1`

// retryDeadLettersSQL puts the dead letters at positions $1 (every one when
// $1 is NULL) back into the outbox under their original pos (the identity
// never hands it out again), so a retry goes first and keeps its name in
// logs and listings, with its count of failed attempts.
const retryDeadLettersSQL = `
WITH retried AS (
    DELETE FROM audit_dead_letters
    WHERE $1::bigint[] IS NULL OR pos = ANY($1::bigint[])
    RETURNING *
)
INSERT INTO audit_outbox (
    pos, id, workspace_id, occurred_at, recorded_at, action, actor_type,
    actor_id, actor_email, actor_name, resource_type, resource_ids,
    resource_ids_flat, source, ip, user_agent, request_id, details, attempts
) OVERRIDING SYSTEM VALUE
SELECT pos, id, workspace_id, occurred_at, recorded_at, action, actor_type,
       actor_id, actor_email, actor_name, resource_type, resource_ids,
       resource_ids_flat, source, ip, user_agent, request_id, details, attempts
FROM retried`

// ListDeadLetters returns up to limit dead letters, oldest first; limit <= 0
// means all.
func ListDeadLetters(ctx context.Context, db DB, limit int) ([]DeadLetter, error) {
	var lim *int
	if limit > 0 {
		lim = &limit
	}
	rows, err := db.Query(ctx, listDeadLettersSQL, lim)
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	dls, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		err := row.Scan(&d.Pos, &d.FailedAt, &d.Error, &d.Attempts, &d.ID, &d.WorkspaceID,
			&d.OccurredAt, &d.RecordedAt, &d.Action, &d.Source)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	return dls, nil
}

// RetryDeadLetters moves the dead letters at positions back into the outbox,
// to be moved again by a relay, and returns how many it moved. Positions
// that are not dead letters are ignored. Fix the cause first (add the
// partition, drop the constraint): a row that fails again comes back.
func RetryDeadLetters(ctx context.Context, db DB, positions []int64) (int, error) {
	if len(positions) == 0 {
		return 0, errors.New("relay: RetryDeadLetters needs positions; use RetryAllDeadLetters for all")
	}
	tag, err := db.Exec(ctx, retryDeadLettersSQL, positions)
	if err != nil {
		return 0, fmt.Errorf("retrying %d dead letters: %w", len(positions), err)
	}
	return int(tag.RowsAffected()), nil
}

// RetryAllDeadLetters moves every dead letter back into the outbox and
// returns how many it moved.
func RetryAllDeadLetters(ctx context.Context, db DB) (int, error) {
	tag, err := db.Exec(ctx, retryDeadLettersSQL, nil)
	if err != nil {
		return 0, fmt.Errorf("retrying all dead letters: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
