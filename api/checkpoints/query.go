package checkpoints

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/integrity"
)

// pageSQL reads up to $3 checkpoints of workspace $1 with id greater than
// $2 (0 for the first page), oldest first: the rows after ($1, $2) in
// audit_checkpoints_workspace_idx (workspace_id, id), migration 00008, up
// to the end of workspace $1. Together the two conditions say exactly
// "workspace_id = $1 AND id > $2", and the plan is a range scan of that
// index stopped after $3 rows, custom or generic, however deep the page
// (EXPLAIN in TestDeepPageIsAnIndexRangeScan).
//
// It is written this way, not as "workspace_id = $1 AND id > $2 ORDER BY
// id", on purpose. With the equality, ordering by workspace_id is
// redundant to the planner and the primary key also yields id order, so it
// may walk the primary key from $2 and filter on the workspace. For a
// workspace whose checkpoints are old (it went quiet while others went on)
// that reads every later checkpoint of every workspace: 180,000 rows
// filtered out for the last 100-row page of one workspace among 189,000
// checkpoints. Ordering by (workspace_id, id) with a range on workspace_id
// leaves this index the only one that yields the order.
const pageSQL = `
SELECT id, workspace_id, seq, hash, created_at, kind, bridges, key_id, signature
FROM audit_checkpoints
WHERE (workspace_id, id) > ($1, $2) AND workspace_id <= $1
ORDER BY workspace_id, id
LIMIT $3`

// queryPage returns up to limit checkpoints of workspace after the
// checkpoint afterID (0: from the first), oldest first, and whether more
// follow.
func queryPage(ctx context.Context, pool *pgxpool.Pool, workspace string, afterID int64, limit int) ([]integrity.Checkpoint, bool, error) {
	// One extra row tells whether a next page exists.
	rows, err := pool.Query(ctx, pageSQL, workspace, afterID, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("querying checkpoints: %w", err)
	}
	defer rows.Close()
	out := make([]integrity.Checkpoint, 0, min(limit, 128))
	more := false
	for rows.Next() {
		if len(out) == limit {
			more = true
			break
		}
		var (
			cp      integrity.Checkpoint
			hash    []byte
			created time.Time
			bridges string
			sig     []byte
		)
		if err := rows.Scan(&cp.ID, &cp.WorkspaceID, &cp.Seq, &hash, &created, &cp.Kind, &bridges, &cp.KeyID, &sig); err != nil {
			return nil, false, fmt.Errorf("reading checkpoint row: %w", err)
		}
		if cp.WorkspaceID != workspace {
			// pageSQL cannot return one; refuse rather than serve it if a
			// change to the query ever did.
			return nil, false, fmt.Errorf("reading checkpoints of workspace %s: got checkpoint %d of another workspace", workspace, cp.ID)
		}
		// The same rendering as integrity.List, which the signatures were
		// made over: see integrity.Checkpoint.
		cp.Hash = hex.EncodeToString(hash)
		cp.CreatedAt = outbox.FormatTime(created)
		if err := json.Unmarshal([]byte(bridges), &cp.Bridges); err != nil {
			return nil, false, fmt.Errorf("reading checkpoint %d: bridges: %w", cp.ID, err)
		}
		if sig != nil {
			s := base64.StdEncoding.EncodeToString(sig)
			cp.Signature = &s
		}
		out = append(out, cp)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("querying checkpoints: %w", err)
	}
	return out, more, nil
}
