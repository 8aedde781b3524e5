package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
	"github.com/auditlog/auditlog/outbox"
)

func sampleEvent(i int) outbox.Event {
	return outbox.Event{
		WorkspaceID: fmt.Sprintf("ws_%d", i%50),
		Action:      "ticket.update",
		Actor:       outbox.Actor{Type: "user", ID: fmt.Sprintf("u_%d", i), Email: fmt.Sprintf("user%d@acme.io", i), Name: "Alice Liddell"},
		Resource:    outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": fmt.Sprintf("t_%d", i), "channel": "C0451", "tags": []any{"b", "a"}}},
		Source:      "web",
		IP:          "203.0.113.7",
		UserAgent:   "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
		RequestID:   fmt.Sprintf("req_%d", i),
		Details: map[string]any{"changes": map[string]any{
			"status":   map[string]any{"from": "open", "to": "closed"},
			"priority": map[string]any{"from": "normal", "to": "high"},
			"subject":  map[string]any{"from": "Printer on fire", "to": "Printer on fire (again)"},
		}, "comment": "Closed after the customer confirmed the replacement printer works as expected."},
	}
}

func countOutbox(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_outbox`).Scan(&n))
	return n
}

func TestRecordWritesInCallersTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)

	// Rolled back: the event is gone with the business change.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, outbox.Record(ctx, tx, sampleEvent(1)))
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, 0, countOutbox(t, pool))

	// Committed: exactly one row, in its stored forms.
	e := sampleEvent(2)
	e.ID = "01936a5e-7c1f-7b3a-9d0e-2f5c1a9b8e77"
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.Record(ctx, tx, e) }))
	require.Equal(t, 1, countOutbox(t, pool))
	var (
		id, flat, details, ip string
		occurred, recorded    time.Time
	)
	require.NoError(t, pool.QueryRow(ctx, `SELECT id::text, resource_ids_flat, details, host(ip), occurred_at, recorded_at FROM audit_outbox`).
		Scan(&id, &flat, &details, &ip, &occurred, &recorded))
	require.Equal(t, e.ID, id)
	require.Equal(t, "channel=C0451;tags=a,b;ticket=t_2", flat)
	require.True(t, json.Valid([]byte(details)))
	require.Equal(t, "203.0.113.7", ip)
	require.Equal(t, occurred.Truncate(time.Millisecond), occurred, "stored truncated to ms")
	require.Equal(t, recorded, occurred)

	// Invalid: refused before touching the transaction, which stays usable.
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		bad := sampleEvent(3)
		bad.Action = "Nope"
		err := outbox.Record(ctx, tx, bad)
		ve, ok := outbox.AsValidationError(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, "action", ve.Field)
		return outbox.Record(ctx, tx, sampleEvent(4))
	}))
	require.Equal(t, 2, countOutbox(t, pool))
}

func TestRecordBatchAllOrNone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)

	es := make([]outbox.Event, 10000)
	for i := range es {
		es[i] = sampleEvent(i)
	}
	es[7777].Source = "bad source"
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.RecordBatch(ctx, tx, es) })
	ve, ok := outbox.AsValidationError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, 7777, ve.Index)
	require.Equal(t, "events[7777].source", ve.FieldPath())
	require.Equal(t, 0, countOutbox(t, pool), "nothing written when one event is bad")

	es[7777].Source = "web"
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.RecordBatch(ctx, tx, es) }))
	require.Equal(t, 10000, countOutbox(t, pool))
	var distinct int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(DISTINCT id) FROM audit_outbox`).Scan(&distinct))
	require.Equal(t, 10000, distinct)
}

// TestRecordBatchLeavesTheTransactionUsable: an invalid event, first or
// last, of a batch normalised on one goroutine (small) or several (large)
// writes nothing and leaves the caller's transaction as it was, business
// change included.
func TestRecordBatchLeavesTheTransactionUsable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	_, err := pool.Exec(ctx, `CREATE TABLE business (name text)`)
	require.NoError(t, err)

	want := 0
	for _, n := range []int{10, 300, 5000} {
		for _, bad := range []int{0, n - 1} {
			t.Run(fmt.Sprintf("n=%d/bad=%d", n, bad), func(t *testing.T) {
				es := make([]outbox.Event, n)
				for i := range es {
					es[i] = sampleEvent(i)
				}
				es[bad].Action = "Not An Action"
				tx, err := pool.Begin(ctx)
				require.NoError(t, err)
				defer func() { _ = tx.Rollback(ctx) }()
				_, err = tx.Exec(ctx, `INSERT INTO business VALUES ($1)`, t.Name())
				require.NoError(t, err)

				_, err = outbox.Default().RecordBatchIDs(ctx, tx, es)
				ve, ok := outbox.AsValidationError(err)
				require.True(t, ok, "%v", err)
				require.Equal(t, bad, ve.Index)

				es[bad].Action = "ticket.update"
				ids, err := outbox.Default().RecordBatchIDs(ctx, tx, es)
				require.NoError(t, err, "the transaction is still usable")
				require.Len(t, ids, n)
				require.NoError(t, tx.Commit(ctx))
				want += n

				var rows, business int
				require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE id = ANY($1::uuid[])) FROM audit_outbox`, ids).
					Scan(&rows, &business))
				require.Equal(t, want, rows, "the refused batch wrote nothing, the retried one everything")
				require.Equal(t, n, business, "the ids returned are the ids stored")
				require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM business WHERE name = $1`, t.Name()).Scan(&business))
				require.Equal(t, 1, business, "the business change committed with the events")
			})
		}
	}
}

func TestRecordNeedsTransaction(t *testing.T) {
	t.Parallel()
	require.Error(t, outbox.Record(context.Background(), nil, sampleEvent(1)))
	require.Error(t, outbox.RecordBatch(context.Background(), nil, []outbox.Event{sampleEvent(1)}))
}

// TestStoredEventsAreImmutable: once in audit_events, a row cannot be
// updated or deleted (migration 00004); retention drops whole partitions.
func TestStoredEventsAreImmutable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.New(t)
	_, err := pool.Exec(ctx, `CREATE TABLE audit_events_p20261101 PARTITION OF audit_events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO audit_events (seq, id, workspace_id, occurred_at, recorded_at, action, actor_type, source)
		VALUES (1, gen_random_uuid(), 'ws', '2026-11-20T00:00:00Z', now(), 'a.b', 'system', 'system')`)
	require.NoError(t, err)
	for _, stmt := range []string{
		`UPDATE audit_events SET action = 'x.y'`,
		`UPDATE audit_events_p20261101 SET actor_email = 'mallory@evil.io'`,
		`DELETE FROM audit_events`,
		`DELETE FROM audit_events_p20261101`,
	} {
		_, err := pool.Exec(ctx, stmt)
		require.ErrorContains(t, err, "immutable", stmt)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'a.b'`).Scan(&n))
	require.Equal(t, 1, n)
	_, err = pool.Exec(ctx, `DROP TABLE audit_events_p20261101`)
	require.NoError(t, err, "retention still drops partitions")
}

func BenchmarkNormalise(b *testing.B) {
	r, err := outbox.New(outbox.Options{})
	require.NoError(b, err)
	body, err := json.Marshal(map[string]any{
		"workspace_id": "ws_acme", "action": "ticket.update", "source": "web", "ip": "203.0.113.7",
		"actor":    map[string]any{"type": "user", "id": "u_42", "email": "Alice@Acme.io", "name": "Alice Liddell"},
		"resource": map[string]any{"type": "ticket", "ids": map[string]any{"ticket": "t_981", "channel": "C0451"}},
		"details":  sampleEvent(1).Details,
	})
	require.NoError(b, err)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		e, err := outbox.DecodeEvent(body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.Validate(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBusinessTx compares a small business transaction without an
// event, with one Record (in a pgx transaction, and in an outbox.Tx), and
// with one event sent by Queue in the same batch as the UPDATE: the cost
// audit logging adds to a request.
func BenchmarkBusinessTx(b *testing.B) {
	ctx := context.Background()
	pool := testdb.New(b)
	_, err := pool.Exec(ctx, `CREATE TABLE bench_tickets (id bigint PRIMARY KEY, status text NOT NULL)`)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `INSERT INTO bench_tickets SELECT g, 'open' FROM generate_series(1, 1000) g`)
	require.NoError(b, err)
	const updateSQL = `UPDATE bench_tickets SET status = $2 WHERE id = $1`
	for _, kind := range []string{"without_record", "with_record", "with_record_in_outbox_tx", "with_queue"} {
		b.Run(kind, func(b *testing.B) {
			b.ReportAllocs()
			begin := pgx.BeginFunc
			if kind == "with_record_in_outbox_tx" {
				begin = func(ctx context.Context, db interface {
					Begin(context.Context) (pgx.Tx, error)
				}, fn func(pgx.Tx) error) error {
					return outbox.BeginFunc(ctx, pool, fn)
				}
			}
			i := 0
			for b.Loop() {
				i++
				id, status := i%1000+1, fmt.Sprint("s", i%7)
				err := begin(ctx, pool, func(tx pgx.Tx) error {
					if kind == "with_queue" {
						batch := &pgx.Batch{}
						batch.Queue(updateSQL, id, status)
						if err := outbox.Queue(ctx, batch, sampleEvent(i)); err != nil {
							return err
						}
						return tx.SendBatch(ctx, batch).Close()
					}
					if _, err := tx.Exec(ctx, updateSQL, id, status); err != nil {
						return err
					}
					if kind == "with_record" || kind == "with_record_in_outbox_tx" {
						return outbox.Record(ctx, tx, sampleEvent(i))
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRecordBatch measures RecordBatch of 1,000 and 10,000 events in
// one transaction each; `auditlog bench pipeline` compares it with a raw
// COPY of the same rows (recordbatch_vs_copy).
func BenchmarkRecordBatch(b *testing.B) {
	ctx := context.Background()
	pool := testdb.New(b)
	for _, n := range []int{1000, 10000} {
		es := make([]outbox.Event, n)
		for i := range es {
			es[i] = sampleEvent(i)
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.RecordBatch(ctx, tx, es) }); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_, err := pool.Exec(ctx, `TRUNCATE audit_outbox`)
				require.NoError(b, err)
				b.StartTimer()
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
