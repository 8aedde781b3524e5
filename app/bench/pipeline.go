package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/outbox"
	"github.com/auditlog/auditlog/outbox/relay"
)

// pipelineSpan is how far back the pipeline's events occurred: a week, as
// for events recorded as they happen (two partitions at most).
const pipelineSpan = 7 * 24 * time.Hour

// pipelineStage writes --events events through RecordBatch, relays them
// until the outbox is empty, inserts the same rows again with one INSERT ...
// SELECT (the floor), copies the same rows into the outbox with a raw COPY
// and relays them without the chain, then writes them once more through
// RecordBatch and raw COPY in turn, batch by batch (interleavedWrites): the
// comparison recordbatch_vs_copy's target reads. Every phase starts after a
// CHECKPOINT; generation of the input is outside the timings.
func (b *bench) pipelineStage(ctx context.Context) error {
	rs := runs{}
	n := b.cfg.events
	var storage storageFigures
	for run := range b.cfg.runs {
		if err := b.resetStore(ctx); err != nil {
			return err
		}

		// RecordBatch.
		d, err := b.phase(ctx, rs, "recordbatch", n, func() (time.Duration, error) { return b.recordBatches(ctx) })
		if err != nil {
			return err
		}

		// Relay.
		var (
			half    time.Duration
			batches uint64
		)
		rd, err := b.phase(ctx, rs, "relay", n, func() (d time.Duration, err error) {
			d, half, batches, err = b.relayAll(ctx, false)
			return d, err
		})
		if err != nil {
			return err
		}
		// Sustained: the second half of the backlog moves as fast as the
		// first (a claim slowed by dead outbox rows would show here).
		rs.add("relay_first_half", perSecond(n/2, half))
		rs.add("relay_second_half", perSecond(n-n/2, rd-half))
		rs.add("relay_batches", float64(batches))
		rs.add("relay_ms_per_batch", ms(rd)/float64(max(batches, 1)))
		if storage, err = b.storage(ctx); err != nil {
			return err
		}

		// Floor: the relayed rows, inserted again by one statement.
		fd, fwal, err := b.floor(ctx)
		if err != nil {
			return err
		}
		rs.add("floor", perSecond(n, fd))
		rs.add("floor_wal", float64(fwal)/float64(n))

		// Raw COPY of the same rows into the outbox.
		if err := b.resetStore(ctx); err != nil {
			return err
		}
		cd, err := b.phase(ctx, rs, "copy", n, func() (time.Duration, error) { return b.copyBatches(ctx) })
		if err != nil {
			return err
		}

		// The relay without the hash chain, over the rows the raw COPY
		// left in the outbox: what the chain costs.
		ud, err := b.phase(ctx, rs, "relay_unchained", n, func() (time.Duration, error) {
			d, _, _, err := b.relayAll(ctx, true)
			return d, err
		})
		if err != nil {
			return err
		}

		// RecordBatch and raw COPY again, batch by batch in turn: the
		// phases above are minutes apart, and on a shared machine the
		// state of the disk and caches drifts between them.
		if err := b.resetStore(ctx); err != nil {
			return err
		}
		b.checkpoint(ctx)
		ird, icd, err := b.interleavedWrites(ctx)
		if err != nil {
			return err
		}
		rs.add("recordbatch_interleaved", perSecond(n, ird))
		rs.add("copy_interleaved", perSecond(n, icd))

		b.progress("pipeline run %d/%d: RecordBatch %.0f/s, relay %.0f/s, floor %.0f/s, raw COPY %.0f/s, relay without chain %.0f/s; interleaved: RecordBatch %.0f/s, raw COPY %.0f/s",
			run+1, b.cfg.runs, perSecond(n, d), perSecond(n, rd), perSecond(n, fd), perSecond(n, cd), perSecond(n, ud),
			perSecond(n, ird), perSecond(n, icd))
	}
	if _, err := b.pool.Exec(ctx, dropFloorSrcSQL); err != nil {
		return fmt.Errorf("dropping bench_floor_src: %w", err)
	}
	if err := b.resetStore(ctx); err != nil {
		return err
	}

	o := b.out
	o.num("pipeline.events", float64(n), 0)
	o.num("pipeline.workspaces", float64(b.cfg.workspaces), 0)
	o.num("pipeline.batch", float64(b.cfg.batch), 0)
	o.num("pipeline.recordbatch_events_per_s", rs.median("recordbatch"), 0)
	o.num("pipeline.copy_events_per_s", rs.median("copy"), 0)
	o.num("pipeline.relay_events_per_s", rs.median("relay"), 0)
	o.num("pipeline.relay_first_half_events_per_s", rs.median("relay_first_half"), 0)
	o.num("pipeline.relay_second_half_events_per_s", rs.median("relay_second_half"), 0)
	o.num("pipeline.floor_events_per_s", rs.median("floor"), 0)
	o.num("pipeline.relay_unchained_events_per_s", rs.median("relay_unchained"), 0)
	o.num("pipeline.recordbatch_interleaved_events_per_s", rs.median("recordbatch_interleaved"), 0)
	o.num("pipeline.copy_interleaved_events_per_s", rs.median("copy_interleaved"), 0)
	o.num("pipeline.relay_batches", rs.median("relay_batches"), 0)
	o.num("pipeline.relay_ms_per_batch", rs.median("relay_ms_per_batch"), 2)
	o.num("pipeline.recordbatch_wal_bytes_per_event", rs.median("recordbatch_wal"), 0)
	o.num("pipeline.copy_wal_bytes_per_event", rs.median("copy_wal"), 0)
	o.num("pipeline.relay_wal_bytes_per_event", rs.median("relay_wal"), 0)
	o.num("pipeline.floor_wal_bytes_per_event", rs.median("floor_wal"), 0)
	// The ratios are medians of the per-run ratios: each compares phases
	// measured minutes apart in the same run.
	relayVsFloor := median(divide(rs["relay"], rs["floor"]))
	rbVsCopy := median(divide(rs["recordbatch"], rs["copy"]))
	rbVsCopyInterleaved := median(divide(rs["recordbatch_interleaved"], rs["copy_interleaved"]))
	o.num("pipeline.relay_vs_floor", relayVsFloor, 3)
	o.num("pipeline.recordbatch_vs_copy", rbVsCopy, 3)
	o.num("pipeline.recordbatch_vs_copy_interleaved", rbVsCopyInterleaved, 3)
	o.target("relay_vs_floor", relayVsFloor >= 0.8)
	chainCost := median(divide(rs["relay"], rs["relay_unchained"]))
	o.num("pipeline.relay_chained_vs_unchained", chainCost, 3)
	o.target("relay_chained_vs_unchained", chainCost >= 0.9)
	// The target reads the interleaved ratio: both sides under the same
	// conditions, batch for batch (PERFORMANCE.md, run L).
	o.target("recordbatch_vs_copy", rbVsCopyInterleaved >= 0.8)
	storage.print(o, "storage")
	return nil
}

// divide returns a[i]/b[i].
func divide(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = ratio(a[i], b[i])
	}
	return out
}

// eachBatch generates the stage's events, --batch at a time, both as
// outbox.Events (for RecordBatch) and as the rows RecordBatch stores them as
// (for a raw COPY), and calls fn with each batch, numbered from 0. The
// generation is outside every clock; fn times what it measures.
func (b *bench) eachBatch(fn func(batch int, evs []outbox.Event, rows [][]any) error) error {
	g := newGenerator(b.cfg.seed, b.workspaces)
	evs := make([]outbox.Event, 0, b.cfg.batch)
	rows := make([][]any, 0, b.cfg.batch)
	for done, batch := 0, 0; done < b.cfg.events; done, batch = done+len(evs), batch+1 {
		evs, rows = evs[:0], rows[:0]
		now := time.Now()
		for range min(b.cfg.batch, b.cfg.events-done) {
			e := g.next(g.workspace(), g.within(b.now, pipelineSpan))
			evs = append(evs, e.event())
			rows = append(rows, e.outboxValues(now))
		}
		if err := fn(batch, evs, rows); err != nil {
			return err
		}
	}
	return nil
}

// recordBatches writes the stage's events through RecordBatch, --batch per
// transaction, and returns the time spent in the transactions.
func (b *bench) recordBatches(ctx context.Context) (total time.Duration, err error) {
	err = b.eachBatch(func(_ int, evs []outbox.Event, _ [][]any) error {
		d, err := b.recordBatch(ctx, evs)
		total += d
		return err
	})
	return total, err
}

// recordBatch writes evs through RecordBatch in one transaction and returns
// the time the transaction took.
func (b *bench) recordBatch(ctx context.Context, evs []outbox.Event) (time.Duration, error) {
	start := time.Now()
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error { return b.rec.RecordBatch(ctx, tx, evs) })
	if err != nil {
		return 0, fmt.Errorf("RecordBatch of %d events: %w", len(evs), err)
	}
	return time.Since(start), nil
}

// copyRows copies rows (outboxColumns) straight into audit_outbox in one
// transaction and returns the time the transaction took.
func (b *bench) copyRows(ctx context.Context, rows [][]any) (time.Duration, error) {
	start := time.Now()
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_outbox"}, outboxColumns, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("copying %d rows into audit_outbox: %w", len(rows), err)
	}
	return time.Since(start), nil
}

// interleavedWrites writes the stage's events twice, each batch once
// through RecordBatch and once as the same rows by a raw COPY into
// audit_outbox (which has no unique key but pos, so both land), taking
// turns at going first, and returns the time each side spent in its
// transactions. Both sides thus meet the same disk and cache state.
func (b *bench) interleavedWrites(ctx context.Context) (recordBatch, rawCopy time.Duration, err error) {
	err = b.eachBatch(func(batch int, evs []outbox.Event, rows [][]any) error {
		rb := func() error {
			d, err := b.recordBatch(ctx, evs)
			recordBatch += d
			return err
		}
		cp := func() error {
			d, err := b.copyRows(ctx, rows)
			rawCopy += d
			return err
		}
		first, second := rb, cp
		if batch%2 == 1 {
			first, second = cp, rb
		}
		if err := first(); err != nil {
			return err
		}
		return second()
	})
	return recordBatch, rawCopy, err
}

// copyBatches copies the same rows recordBatches writes straight into
// audit_outbox, --batch per transaction, and returns the time spent in the
// transactions.
func (b *bench) copyBatches(ctx context.Context) (total time.Duration, err error) {
	err = b.eachBatch(func(_ int, _ []outbox.Event, rows [][]any) error {
		d, err := b.copyRows(ctx, rows)
		total += d
		return err
	})
	return total, err
}

// relayAll drains the outbox with relay.Drain, as the relay loop moves a
// backlog (two moves in flight), checks every event was stored once, and
// returns the time it took, the time until half the events had moved (read
// off the relay's counters every millisecond) and the number of moves.
// unchained turns the hash chain off (relay.Config.WithoutChain).
func (b *bench) relayAll(ctx context.Context, unchained bool) (total, half time.Duration, batches uint64, err error) {
	r, err := relay.New(b.pool, relay.Config{BatchSize: b.cfg.relayBatch, Partitions: b.maint, Logger: b.log, WithoutChain: unchained})
	if err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	halfway := make(chan time.Duration, 1)
	stop := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if r.Stats().Moved >= uint64(b.cfg.events/2) {
					halfway <- time.Since(start)
					return
				}
			}
		}
	})
	moved, err := r.Drain(ctx)
	total = time.Since(start)
	close(stop)
	watcher.Wait()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("relaying: %w", err)
	}
	select {
	case half = <-halfway:
		// The watcher may tick after Drain returned.
		half = min(half, total)
	default:
		half = total // the last move took the drain past half way
	}
	left, err := b.count(ctx, countOutboxSQL)
	if err != nil {
		return 0, 0, 0, err
	}
	dead, err := b.count(ctx, countDeadSQL)
	if err != nil {
		return 0, 0, 0, err
	}
	stored, err := b.count(ctx, countEventsSQL)
	if err != nil {
		return 0, 0, 0, err
	}
	if left != 0 || dead != 0 || stored != int64(b.cfg.events) || moved != b.cfg.events {
		return 0, 0, 0, fmt.Errorf("relay moved %d rows, left %d in the outbox, %d dead letters, stored %d of %d",
			moved, left, dead, stored, b.cfg.events)
	}
	return total, half, r.Stats().Batches, nil
}

// floor keeps the stored rows aside, empties audit_events and inserts them
// again with one INSERT ... SELECT, returning its duration and WAL bytes.
func (b *bench) floor(ctx context.Context) (time.Duration, int64, error) {
	for _, q := range []string{dropFloorSrcSQL, createFloorSrcSQL, truncateEventsSQL} {
		if _, err := b.pool.Exec(ctx, q); err != nil {
			return 0, 0, fmt.Errorf("preparing the floor (%s): %w", q, err)
		}
	}
	b.checkpoint(ctx)
	wal0 := b.walPosition(ctx)
	start := time.Now()
	tag, err := b.pool.Exec(ctx, floorInsertSQL)
	d := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("inserting the floor rows: %w", err)
	}
	if tag.RowsAffected() != int64(b.cfg.events) {
		return 0, 0, fmt.Errorf("floor inserted %d rows, want %d", tag.RowsAffected(), b.cfg.events)
	}
	return d, b.walPosition(ctx) - wal0, nil
}

// storageFigures are the bytes audit_events takes per stored event.
type storageFigures struct {
	rows    int64
	heap    int64
	indexes int64
	index   []indexSize
}

type indexSize struct {
	name  string
	bytes int64
}

// storage measures audit_events as it stands.
func (b *bench) storage(ctx context.Context) (storageFigures, error) {
	var s storageFigures
	var err error
	if s.rows, err = b.count(ctx, countEventsSQL); err != nil {
		return s, err
	}
	if err := b.pool.QueryRow(ctx, storageSQL).Scan(&s.heap, &s.indexes); err != nil {
		return s, fmt.Errorf("measuring audit_events: %w", err)
	}
	rows, err := b.pool.Query(ctx, indexSizesSQL)
	if err != nil {
		return s, fmt.Errorf("measuring the indexes of audit_events: %w", err)
	}
	s.index, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (indexSize, error) {
		var i indexSize
		err := r.Scan(&i.name, &i.bytes)
		return i, err
	})
	if err != nil {
		return s, fmt.Errorf("measuring the indexes of audit_events: %w", err)
	}
	return s, nil
}

func (s storageFigures) print(o *report, prefix string) {
	if s.rows == 0 {
		return
	}
	per := func(n int64) float64 { return float64(n) / float64(s.rows) }
	o.num(prefix+".rows", float64(s.rows), 0)
	o.num(prefix+".bytes_per_event", per(s.heap+s.indexes), 0)
	o.num(prefix+".heap_bytes_per_event", per(s.heap), 0)
	o.num(prefix+".index_bytes_per_event", per(s.indexes), 0)
	for _, i := range s.index {
		name := strings.TrimPrefix(i.name, "audit_events_")
		o.num(prefix+".index."+name+"_bytes_per_event", per(i.bytes), 0)
	}
}
