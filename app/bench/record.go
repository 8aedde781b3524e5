package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/auditlog/auditlog/outbox"
)

// recordTickets is the size of the record stage's business table.
const recordTickets = 10_000

// recordStage measures a small business transaction (one UPDATE by primary
// key, then COMMIT) with and without one outbox.Record in it. Both kinds run
// on the same connection, interleaved in random pairs, so drift in the
// machine's load hits both alike; the figure is the ratio of the medians.
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
		plain, with, calls, err := b.recordRun(ctx, uint64(run))
		if err != nil {
			return err
		}
		p50, w50 := percentile(plain, 0.5), percentile(with, 0.5)
		rs.add("plain_p50", ms(p50))
		rs.add("plain_p95", ms(percentile(plain, 0.95)))
		rs.add("with_p50", ms(w50))
		rs.add("with_p95", ms(percentile(with, 0.95)))
		rs.add("ratio", ratio(float64(w50), float64(p50)))
		rs.add("call_p50", ms(percentile(calls, 0.5)))
		b.progress("record run %d/%d: plain %.3f ms, with Record %.3f ms (median)", run+1, b.cfg.runs, ms(p50), ms(w50))
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
	_, err := b.pool.Exec(ctx, truncateOutboxSQL)
	return err
}

// recordRun runs recordTxs transactions of each kind and returns their
// durations and those of the Record calls.
func (b *bench) recordRun(ctx context.Context, run uint64) (plain, with, calls []time.Duration, err error) {
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("acquiring a connection: %w", err)
	}
	defer conn.Release()
	rng := rand.New(rand.NewPCG(b.cfg.seed, 0x7265636f7264+run))
	one := func(withRecord bool) (time.Duration, error) {
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
		tx, err := conn.Begin(ctx)
		if err != nil {
			return 0, fmt.Errorf("beginning the business transaction: %w", err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, updateTicketSQL, id, status); err != nil {
			return 0, fmt.Errorf("updating bench_tickets: %w", err)
		}
		if withRecord {
			t := time.Now()
			if err := b.rec.Record(ctx, tx, ev); err != nil {
				return 0, fmt.Errorf("recording the event: %w", err)
			}
			calls = append(calls, time.Since(t))
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("committing the business transaction: %w", err)
		}
		return time.Since(start), nil
	}
	for range b.cfg.recordTxs {
		first := rng.IntN(2) == 0
		for _, kind := range []bool{first, !first} {
			d, err := one(kind)
			if err != nil {
				return nil, nil, nil, err
			}
			if kind {
				with = append(with, d)
			} else {
				plain = append(plain, d)
			}
		}
	}
	return plain, with, calls, nil
}
