package outbox

import (
	"context"
	"fmt"
	"time"

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
// Once a savepoint has been begun (Tx.Begin), Record writes at once even on
// the Tx itself: with a savepoint open, what is sent through the outer
// transaction belongs to the savepoint, and must go if it is rolled back. A
// SAVEPOINT sent as SQL is not seen; use Begin.
//
// A Tx begun on a pool holds one of its connections from Begin until Commit
// or Rollback. Like a pgx.Tx, after either it refuses to be used (ErrTxClosed).
type Tx struct {
	conn    *pgx.Conn
	release func() // gives conn back to its pool, if it came from one
	tx      pgx.Tx
	commit  string        // pgx.TxOptions.CommitQuery, or COMMIT
	pending []*outboxCols // the INSERT arguments of each recorded event
	nested  bool          // a savepoint was begun: Record writes at once
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
	commit := opts.CommitQuery
	if commit == "" {
		commit = "COMMIT"
	}
	return &Tx{conn: conn, release: func() {}, tx: tx, commit: commit}, nil
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

// keeps reports whether t keeps an event recorded now until Commit: not
// once a savepoint was begun (the event must go with it), nor once t has
// ended (Record's INSERT then gets ErrTxClosed from Exec).
func (t *Tx) keeps() bool { return !t.closed && !t.nested }

// keep adds w's INSERT to those Commit sends.
func (t *Tx) keep(w *row) {
	c := newOutboxCols()
	c.load(w)
	t.pending = append(t.pending, c)
}

// endTimeout bounds the ROLLBACK that ends a transaction whose Commit
// failed, sent even when the caller's context is done.
const endTimeout = 5 * time.Second

// done is an already cancelled context: see settle.
var done = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

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
	b.Queue(t.commit)
	n := len(t.pending)
	t.pending = nil
	err := sendCommit(ctx, t.tx, b, n)
	t.settle(ctx)
	return err
}

// settle ends the pgx transaction underneath as the batch left the server.
// Committed, the server is out of the transaction but pgx does not know:
// told to commit with a context already done, pgx marks it closed without
// sending anything (the connection is idle, so it keeps it), and whatever
// still holds it, a LargeObjects for one, is refused from now on rather
// than run outside any transaction. Failed, the server skipped what
// followed the failure, COMMIT included, and may still be in the
// transaction: the ROLLBACK goes even if ctx is done (a context cancelled
// before Commit is how the batch failed), and if it cannot, the connection
// is closed, as pgx does, rather than left in a transaction for its next
// user to commit.
func (t *Tx) settle(ctx context.Context) {
	if t.conn.PgConn().TxStatus() == 'I' {
		_ = t.tx.Commit(done)
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
	defer cancel()
	if err := t.tx.Rollback(rctx); err != nil || t.conn.PgConn().TxStatus() != 'I' {
		_ = t.conn.Close(rctx)
	}
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

// Begin starts a savepoint. Events recorded in it, and from then on in t
// too, are written at once.
func (t *Tx) Begin(ctx context.Context) (pgx.Tx, error) {
	if t.closed {
		return nil, pgx.ErrTxClosed
	}
	sp, err := t.tx.Begin(ctx)
	if err == nil {
		t.nested = true
	}
	return sp, err
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
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return t.tx.SendBatch(ctx, b)
}

// LargeObjects is pgx.Tx's LargeObjects; after Commit or Rollback its
// methods answer ErrTxClosed.
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

// closedRow answers ErrTxClosed for a Tx used after it ended.
type closedRow struct{}

func (closedRow) Scan(...any) error { return pgx.ErrTxClosed }
