package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// datasetSpan is how far back the bulk-loaded events go: three months, so
// queries and exports cross monthly partitions.
const datasetSpan = 90 * 24 * time.Hour

// loadChunk is the rows per COPY (and transaction) of a bulk load.
const loadChunk = 200_000

// dataset is a set of events bulk-loaded straight into audit_events.
type dataset struct {
	name string
	rows int
	seed uint64
	// pick chooses the workspace of the next event.
	pick func(g *generator) string
}

// ensureDataset loads ds unless audit_events already holds it, then
// vacuums and analyzes the table. Rows go in occurred_at order with seq
// assigned here (as the relay would have), by COPY in chunks, the input
// generated as it is sent.
func (b *bench) ensureDataset(ctx context.Context, ds dataset) error {
	var have int64
	if err := b.pool.QueryRow(ctx, datasetRowsSQL, ds.name).Scan(&have); err != nil {
		return fmt.Errorf("looking up data set %s: %w", ds.name, err)
	}
	if have == int64(ds.rows) {
		return nil
	}
	if have >= 0 {
		// Loaded with another size: start from an empty store.
		if err := b.resetStore(ctx); err != nil {
			return err
		}
	}
	var lastSeq int64
	if err := b.pool.QueryRow(ctx, lastSeqSQL).Scan(&lastSeq); err != nil {
		return fmt.Errorf("reading audit_seq: %w", err)
	}
	b.progress("loading %d events (%s) with COPY", ds.rows, ds.name)
	start := time.Now()
	src := &loadSource{
		g:     newGenerator(ds.seed, b.workspaces),
		ds:    ds,
		start: b.now.Add(-datasetSpan),
		seq:   lastSeq,
	}
	for src.i < ds.rows {
		src.limit = min(src.i+loadChunk, ds.rows)
		if _, err := b.pool.CopyFrom(ctx, pgx.Identifier{"audit_events"}, eventsColumns, src); err != nil {
			return fmt.Errorf("loading data set %s: %w", ds.name, err)
		}
	}
	if _, err := b.pool.Exec(ctx, advanceSeqSQL, src.seq); err != nil {
		return fmt.Errorf("advancing audit_seq: %w", err)
	}
	if _, err := b.pool.Exec(ctx, vacuumEventsSQL); err != nil {
		return fmt.Errorf("vacuuming audit_events: %w", err)
	}
	if _, err := b.pool.Exec(ctx, markDatasetSQL, ds.name, ds.rows); err != nil {
		return fmt.Errorf("marking data set %s: %w", ds.name, err)
	}
	b.progress("loaded %d events in %.1fs", ds.rows, time.Since(start).Seconds())
	return nil
}

// loadSource is a pgx.CopyFromSource generating a data set's rows up to
// limit; the next chunk continues where it stopped.
type loadSource struct {
	g     *generator
	ds    dataset
	start time.Time
	seq   int64
	i     int
	limit int
	vals  []any
}

func (s *loadSource) Next() bool {
	if s.i >= s.limit {
		return false
	}
	at := s.start.Add(time.Duration(int64(datasetSpan) / int64(s.ds.rows) * int64(s.i)))
	e := s.g.next(s.ds.pick(s.g), at)
	s.seq++
	s.i++
	// Recorded a few tens of milliseconds after it occurred.
	s.vals = e.eventsValues(s.seq, e.occurredAt.Add(time.Duration(20+s.g.rng.IntN(200))*time.Millisecond))
	return true
}

func (s *loadSource) Values() ([]any, error) { return s.vals, nil }
func (s *loadSource) Err() error             { return nil }
