package integrity

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/auditlog/auditlog/outbox"
)

// setVerifyWorkspaceSQL passes the workspace to verifyCopySQL (COPY takes
// no bind parameters).
const setVerifyWorkspaceSQL = `SELECT set_config('auditlog.verify_workspace', $1, true)`

// verifyCopySQL streams one workspace's events in chain order as NDJSON
// export lines.
const verifyCopySQL = `COPY (
SELECT ` + NDJSONLineSQL + `
FROM audit_events e
WHERE e.workspace_id = current_setting('auditlog.verify_workspace')
ORDER BY e.seq
) TO STDOUT ` + NDJSONCopyOptions

// VerifyWorkspace verifies workspace's chain as stored, against its
// checkpoints, both read from one snapshot. pub as for [Verify].
func VerifyWorkspace(ctx context.Context, pool *pgxpool.Pool, workspace string, pub ed25519.PublicKey) (*Report, error) {
	if !outbox.ValidWorkspaceID(workspace) {
		return nil, fmt.Errorf("verifying: workspace %q must be 1-64 characters of A-Z a-z 0-9 . _ : -", workspace)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("verifying: acquiring a connection: %w", err)
	}
	defer conn.Release()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("verifying: starting a snapshot: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	cps, err := List(ctx, tx, workspace)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, setVerifyWorkspaceSQL, workspace); err != nil {
		return nil, fmt.Errorf("verifying: %w", err)
	}

	copyCtx, stop := context.WithCancel(ctx)
	defer stop()
	pr, pw := io.Pipe()
	copied := make(chan error, 1)
	go func() {
		_, err := conn.Conn().PgConn().CopyTo(copyCtx, pw, verifyCopySQL)
		pw.CloseWithError(err)
		copied <- err
	}()
	rep, verr := Verify(pr, cps, pub)
	// Verification may stop at the first break, before the end: stop the
	// COPY (cancelling closes the connection, which the pool then drops).
	_ = pr.Close()
	stop()
	cerr := <-copied
	if verr != nil {
		return rep, verr
	}
	if cerr != nil && rep.OK() && !errors.Is(cerr, context.Canceled) && !errors.Is(cerr, io.ErrClosedPipe) {
		return rep, fmt.Errorf("verifying: reading events: %w", cerr)
	}
	return rep, nil
}
