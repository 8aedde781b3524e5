package outbox

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/auditlog/auditlog/internal/testdb"
)

// BenchmarkCopyEncoders runs, one after another in every iteration, four
// transactions each writing the same 1,000 bench-shaped events into the
// outbox:
//
//   - recordbatch: RecordBatch (normalise, then COPY encoded by copyRows);
//   - pgx_recordbatch: normalise, then pgx.CopyFrom, as RecordBatch did
//     before copyRows;
//   - raw_pgx: pgx.CopyFrom of the already-normalised rows (the floor);
//   - raw_binary: copyRows of the already-normalised rows.
//
// It reports each one's median, over iterations, of raw_pgx's time divided
// by its own: interleaving them transaction by transaction keeps a shared
// machine's drift out of the ratios.
//
//	go test -run '^$' -bench CopyEncoders -benchtime 200x ./outbox/
func BenchmarkCopyEncoders(b *testing.B) {
	ctx := context.Background()
	pool := testdb.New(b)
	r, err := New(Options{Now: func() time.Time { return testNow }})
	require.NoError(b, err)
	es := benchEvents(1000, testNow)
	rows, err := r.normaliseAll(ctx, es)
	require.NoError(b, err)
	pgxCopy := func(tx pgx.Tx, rows []row) error {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_outbox"}, pgxColumns, newPgxSource(rows))
		return err
	}
	kinds := []struct {
		name string
		run  func(tx pgx.Tx) error
	}{
		{"recordbatch", func(tx pgx.Tx) error { return r.RecordBatch(ctx, tx, es) }},
		{"pgx_recordbatch", func(tx pgx.Tx) error {
			rows, err := r.normaliseAll(ctx, es)
			if err != nil {
				return err
			}
			return pgxCopy(tx, rows)
		}},
		{"raw_pgx", func(tx pgx.Tx) error { return pgxCopy(tx, rows) }},
		{"raw_binary", func(tx pgx.Tx) error { _, err := copyRows(ctx, tx, rows); return err }},
	}
	const floor = 2
	ratios := make([][]float64, len(kinds))
	took := make([]time.Duration, len(kinds))
	for i := 0; b.Loop(); i++ {
		for k, kind := range kinds {
			start := time.Now()
			if err := pgx.BeginFunc(ctx, pool, kind.run); err != nil {
				b.Fatal(err)
			}
			took[k] = time.Since(start)
		}
		for k := range kinds {
			ratios[k] = append(ratios[k], float64(took[floor])/float64(took[k]))
		}
		if i%10 == 9 {
			b.StopTimer()
			_, err := pool.Exec(ctx, `TRUNCATE audit_outbox`)
			require.NoError(b, err)
			b.StartTimer()
		}
	}
	for k, kind := range kinds {
		slices.Sort(ratios[k])
		b.ReportMetric(ratios[k][len(ratios[k])/2], kind.name+"_vs_raw_pgx")
	}
}

// pgxColumns and pgxSource are pgx.CopyFrom's way of writing the outbox,
// with every column on pgx's direct binary plan (outboxCols).
var pgxColumns = []string{
	"id", "workspace_id", "occurred_at", "recorded_at", "action", "actor_type", "actor_id",
	"actor_email", "actor_name", "resource_type", "resource_ids", "resource_ids_flat",
	"source", "ip", "user_agent", "request_id", "details",
}

type pgxSource struct {
	rows []row
	i    int
	cols *outboxCols
}

func newPgxSource(rows []row) *pgxSource    { return &pgxSource{rows: rows, i: -1, cols: newOutboxCols()} }
func (s *pgxSource) Next() bool             { s.i++; return s.i < len(s.rows) }
func (s *pgxSource) Values() ([]any, error) { return s.cols.load(&s.rows[s.i]), nil }
func (s *pgxSource) Err() error             { return nil }
