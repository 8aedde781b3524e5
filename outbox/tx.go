package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tx is a transaction whose Record calls cost no round trip of their own:
// Record validates and normalises the event at once, as always, and Tx
// sends its INSERT with the COMMIT, in one round trip. A Record inside a
// transaction begun with pgx waits for its INSERT's answer, which costs a
// small business transaction about a quarter of its time.
//
// Tx is a pgx.Tx: code that takes a pgx.Tx needs no change, and a Record
// given one of its savepoints (Tx.Begin) writes at once, so a savepoint
// rolled back takes its events with it. What changes is when the database
// sees a recorded event:
//
//   - not before Commit: the transaction's own queries do not find it in
//     audit_outbox (nothing but the relay reads that table);
//   - the database refusing the INSERT (it never has, for a valid event)
//     fails Commit, and the transaction is rolled back, business change and
//     all: the event still exists exactly when the change committed.
//
// A Tx begun on a pool holds one of its connections from Begin until Commit
// or Rollback. Like a pgx.Tx, after either it refuses to be used (ErrTxClosed).
type Tx struct {
	conn    *pgx.Conn
	release func() // gives conn back to its pool, if it came from one
	tx      pgx.Tx
	pending []*outboxCols // the INSERT arguments of each recorded event
	closed  bool
}

var _ pgx.Tx = (*Tx)(nil)

// Begin starts a Tx on a connection of pool.
func Begin(ctx context.Context, pool *pgxpool.Pool) (*Tx, error) {
	return BeginTx(ctx, pool, pgx.TxOptions{})
}

// BeginTx starts a Tx with opts on a connection of pool.
func BeginTx(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions) (*Tx, error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquiring a connection for a transaction: %w", err)
	}
	t, err := beginOn(ctx, pc.Conn(), opts)
	if err != nil {
		pc.Release()
		return nil, err
	}
	t.release = pc.Release
	return t, nil
}

// BeginOn starts a Tx on conn, which the caller keeps: the Tx never closes
// or releases it.
func BeginOn(ctx context.Context, conn *pgx.Conn) (*Tx, error) {
	return beginOn(ctx, conn, pgx.TxOptions{})
}

func beginOn(ctx context.Context, conn *pgx.Conn, opts pgx.TxOptions) (*Tx, error) {
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Tx{conn: conn, release: func() {}, tx: tx}, nil
}

// BeginFunc runs fn in a Tx begun on pool, as pgx.BeginFunc does: it
// commits when fn returns nil and rolls back otherwise.
func BeginFunc(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	tx, err := Begin(ctx, pool)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// record keeps the INSERT arguments of an event recorded in t.
func (t *Tx) record(w *row) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.pending = append(t.pending, newOutboxCols())
	t.pending[len(t.pending)-1].load(w)
	return nil
}

// Commit writes the recorded events and commits, in one round trip.
func (t *Tx) Commit(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.closed = true
	defer t.release()
	if len(t.pending) == 0 {
		return t.tx.Commit(ctx)
	}
	b := &pgx.Batch{}
	for _, c := range t.pending {
		b.Queue(insertOutboxSQL, c.args...)
	}
	b.Queue("COMMIT")
	n := len(t.pending)
	t.pending = nil
	err := sendCommit(ctx, t.tx, b, n)
	if err != nil && t.conn.PgConn().TxStatus() != 'I' {
		// The server skipped what followed the failure, COMMIT included:
		// end the transaction before the connection goes back. (Release
		// would close a connection still in a transaction anyway.)
		_, _ = t.conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

// sendCommit sends b, n INSERTs and a COMMIT, and reads their results.
func sendCommit(ctx context.Context, tx pgx.Tx, b *pgx.Batch, n int) error {
	br := tx.SendBatch(ctx, b)
	for range n {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return fmt.Errorf("writing %d audit events to outbox: %w", n, err)
		}
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("committing with %d audit events: %w", n, err)
	}
	// COMMIT of a failed transaction answers ROLLBACK; the INSERTs would
	// have failed first, but pgx.Tx promises this error and so does Tx.
	if tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// Rollback rolls back, recorded events and all. After Commit it returns
// ErrTxClosed, so a deferred Rollback is safe.
func (t *Tx) Rollback(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.closed = true
	t.pending = nil
	defer t.release()
	return t.tx.Rollback(ctx)
}

// Begin starts a savepoint. Events recorded in it are written at once.
func (t *Tx) Begin(ctx context.Context) (pgx.Tx, error) {
	if t.closed {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Begin(ctx)
}

// CopyFrom is pgx.Tx's CopyFrom.
func (t *Tx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if t.closed {
		return 0, pgx.ErrTxClosed
	}
	return t.tx.CopyFrom(ctx, table, columns, src)
}

// SendBatch is pgx.Tx's SendBatch.
func (t *Tx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.closed {
		return closedBatch{}
	}
	return t.tx.SendBatch(ctx, b)
}

// LargeObjects is pgx.Tx's LargeObjects.
func (t *Tx) LargeObjects() pgx.LargeObjects { return t.tx.LargeObjects() }

// Prepare is pgx.Tx's Prepare.
func (t *Tx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if t.closed {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Prepare(ctx, name, sql)
}

// Exec is pgx.Tx's Exec.
func (t *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.closed {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return t.tx.Exec(ctx, sql, args...)
}

// Query is pgx.Tx's Query.
func (t *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.closed {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Query(ctx, sql, args...)
}

// QueryRow is pgx.Tx's QueryRow.
func (t *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.closed {
		return closedRow{}
	}
	return t.tx.QueryRow(ctx, sql, args...)
}

// Conn is the connection the transaction runs on; nil after Commit or
// Rollback (a pool's connection has gone back to it).
func (t *Tx) Conn() *pgx.Conn {
	if t.closed {
		return nil
	}
	return t.tx.Conn()
}

// closedRow and closedBatch answer ErrTxClosed for a Tx used after it
// ended, where pgx.Tx's own methods return no error.
type closedRow struct{}

func (closedRow) Scan(...any) error { return pgx.ErrTxClosed }

type closedBatch struct{}

func (closedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, pgx.ErrTxClosed }
func (closedBatch) Query() (pgx.Rows, error)         { return nil, pgx.ErrTxClosed }
func (closedBatch) QueryRow() pgx.Row                { return closedRow{} }
func (closedBatch) Close() error                     { return pgx.ErrTxClosed }
func (closedBatch) Tx() pgx.Tx                       { return nil }
