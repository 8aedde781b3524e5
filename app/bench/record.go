package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/outbox"
)

// recordTickets is the size of the record stage's business table.
const recordTickets = 10_000

// recordStage measures a small business transaction (one UPDATE by primary
// key, then COMMIT) in four kinds: plain, the baseline (BEGIN; UPDATE;
// COMMIT); with one outbox.Record after the UPDATE in a pgx transaction (its
// INSERT is one more round trip); the same in an outbox.Tx (the INSERT goes
// with the COMMIT); and with the event queued by outbox.Queue into one batch
// with the UPDATE (BEGIN; the batch; COMMIT). All four run
// on the same connection, interleaved in a random order in every round, so
// drift in the machine's load hits them alike. Each ratio is taken per run
// (the kind's median over the plain median), then its median over runs.
func (b *bench) recordStage(ctx context.Context) error {
	if _, err := b.pool.Exec(ctx, createTicketsSQL); err != nil {
		return fmt.Errorf("creating bench_tickets: %w", err)
	}
	if _, err := b.pool.Exec(ctx, fillTicketsSQL, recordTickets); err != nil {
		return fmt.Errorf("filling bench_tickets: %w", err)
	}
	if _, err := b.pool.Exec(ctx, vacuumTicketsSQL); err != nil {
		return fmt.Errorf("vacuuming bench_tickets: %w", err)
	}
	rs := runs{}
	for run := range b.cfg.runs {
		if _, err := b.pool.Exec(ctx, truncateOutboxSQL); err != nil {
			return fmt.Errorf("truncating audit_outbox: %w", err)
		}
		b.checkpoint(ctx)
		t, err := b.recordRun(ctx, uint64(run))
		if err != nil {
			return err
		}
		p50, w50, q50 := percentile(t.plain, 0.5), percentile(t.with, 0.5), percentile(t.queue, 0.5)
		x50 := percentile(t.withTx, 0.5)
		rs.add("plain_p50", ms(p50))
		rs.add("plain_p95", ms(percentile(t.plain, 0.95)))
		rs.add("with_p50", ms(w50))
		rs.add("with_p95", ms(percentile(t.with, 0.95)))
		rs.add("ratio", ratio(float64(w50), float64(p50)))
		rs.add("call_p50", ms(percentile(t.calls, 0.5)))
		rs.add("queue_p50", ms(q50))
		rs.add("queue_p95", ms(percentile(t.queue, 0.95)))
		rs.add("queue_ratio", ratio(float64(q50), float64(p50)))
		rs.add("tx_p50", ms(x50))
		rs.add("tx_p95", ms(percentile(t.withTx, 0.95)))
		rs.add("tx_ratio", ratio(float64(x50), float64(p50)))
		b.progress("record run %d/%d: plain %.3f ms, with Record %.3f ms, with Record in an outbox.Tx %.3f ms, with Queue %.3f ms (median)",
			run+1, b.cfg.runs, ms(p50), ms(w50), ms(x50), ms(q50))
	}
	o := b.out
	o.num("record.txs", float64(b.cfg.recordTxs), 0)
	o.num("record.plain_median_ms", rs.median("plain_p50"), 3)
	o.num("record.plain_p95_ms", rs.median("plain_p95"), 3)
	o.num("record.with_record_median_ms", rs.median("with_p50"), 3)
	o.num("record.with_record_p95_ms", rs.median("with_p95"), 3)
	// The Record call alone (normalisation and the INSERT's round trip);
	// the rest of the difference is the larger commit.
	o.num("record.record_call_median_ms", rs.median("call_p50"), 3)
	r := rs.median("ratio")
	o.num("record.with_vs_plain", r, 3)
	o.target("record_overhead", r <= 1.25)
	o.num("record.with_record_tx_median_ms", rs.median("tx_p50"), 3)
	o.num("record.with_record_tx_p95_ms", rs.median("tx_p95"), 3)
	x := rs.median("tx_ratio")
	o.num("record.record_tx_vs_plain", x, 3)
	o.target("record_tx_overhead", x <= 1.25)
	o.num("record.with_queue_median_ms", rs.median("queue_p50"), 3)
	o.num("record.with_queue_p95_ms", rs.median("queue_p95"), 3)
	q := rs.median("queue_ratio")
	o.num("record.queue_vs_plain", q, 3)
	o.target("queue_overhead", q <= 1.25)
	_, err := b.pool.Exec(ctx, truncateOutboxSQL)
	return err
}

// The kinds of transaction of the record stage.
const (
	kindPlain    = iota // BEGIN; UPDATE; COMMIT: the baseline
	kindRecord          // BEGIN; UPDATE; Record; COMMIT
	kindRecordTx        // the same in an outbox.Tx: BEGIN; UPDATE; the INSERT with COMMIT
	kindQueue           // BEGIN; one batch of the UPDATE and the queued event; COMMIT
	recordKinds
)

// recordTimes are one run's durations of each kind of transaction, and
// those of the Record calls alone.
type recordTimes struct {
	plain, with, withTx, queue, calls []time.Duration
}

// recordRun runs recordTxs transactions of each kind, the three kinds in a
// random order in every round, and returns their durations.
func (b *bench) recordRun(ctx context.Context, run uint64) (recordTimes, error) {
	var t recordTimes
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return t, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer conn.Release()
	rng := rand.New(rand.NewPCG(b.cfg.seed, 0x7265636f7264+run))
	one := func(kind int) (time.Duration, error) {
		id := 1 + rng.IntN(recordTickets)
		status := statuses[rng.IntN(len(statuses))]
		ws := fmt.Sprintf("ws_%04d", id%50)
		ev := outbox.Event{
			WorkspaceID: ws,
			Action:      "ticket.update",
			Actor:       outbox.Actor{Type: outbox.ActorUser, ID: "u_7", Email: "user7@" + ws + ".example", Name: "User7 Hatter"},
			Resource:    outbox.Resource{Type: "ticket", IDs: map[string]any{"ticket": "t_" + strconv.Itoa(id)}},
			Source:      "web",
			IP:          "203.0.113.7",
			RequestID:   "req_" + strconv.FormatUint(rng.Uint64(), 16),
			Details:     json.RawMessage(`{"changes":{"status":{"from":"open","to":"` + status + `"}}}`),
		}
		start := time.Now()
		var tx pgx.Tx
		var err error
		if kind == kindRecordTx {
			tx, err = outbox.BeginOn(ctx, conn.Conn())
		} else {
			tx, err = conn.Begin(ctx)
		}
		if err != nil {
			return 0, fmt.Errorf("beginning the business transaction: %w", err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if kind == kindQueue {
			batch := &pgx.Batch{}
			batch.Queue(updateTicketSQL, id, status)
			if err := b.rec.Queue(ctx, batch, ev); err != nil {
				return 0, fmt.Errorf("queueing the event: %w", err)
			}
			if err := tx.SendBatch(ctx, batch).Close(); err != nil {
				return 0, fmt.Errorf("updating bench_tickets and writing the queued event: %w", err)
			}
		} else {
			if _, err := tx.Exec(ctx, updateTicketSQL, id, status); err != nil {
				return 0, fmt.Errorf("updating bench_tickets: %w", err)
			}
		}
		if kind == kindRecord || kind == kindRecordTx {
			c := time.Now()
			if err := b.rec.Record(ctx, tx, ev); err != nil {
				return 0, fmt.Errorf("recording the event: %w", err)
			}
			if kind == kindRecord {
				t.calls = append(t.calls, time.Since(c))
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("committing the business transaction: %w", err)
		}
		return time.Since(start), nil
	}
	for range b.cfg.recordTxs {
		for _, kind := range rng.Perm(recordKinds) {
			d, err := one(kind)
			if err != nil {
				return recordTimes{}, err
			}
			switch kind {
			case kindPlain:
				t.plain = append(t.plain, d)
			case kindRecord:
				t.with = append(t.with, d)
			case kindRecordTx:
				t.withTx = append(t.withTx, d)
			case kindQueue:
				t.queue = append(t.queue, d)
			}
		}
	}
	return t, nil
}
