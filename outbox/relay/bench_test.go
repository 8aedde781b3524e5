package relay

import (
	"testing"
)

// BenchmarkMoveBatch measures one relay move of 1000 bench-shaped events
// (claim, seq, hash chain, copy into audit_events, delete from the outbox,
// commit), with the chain and without it (Config.WithoutChain: its cost).
// Recording the events with RecordBatch is outside the timer.
//
//	go test -run '^$' -bench MoveBatch -benchtime 200x ./outbox/relay/
func BenchmarkMoveBatch(b *testing.B) {
	for _, tc := range []struct {
		name      string
		unchained bool
	}{{"chained", false}, {"unchained", true}} {
		b.Run(tc.name, func(b *testing.B) {
			const batch = 1000
			pool := setup(b)
			r, err := New(pool, Config{BatchSize: batch, Logger: testLogger(b), WithoutChain: tc.unchained})
			if err != nil {
				b.Fatal(err)
			}
			es := shapedEvents(batch)
			ctx := b.Context()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				record(b, pool, es)
				b.StartTimer()
				n, err := r.MoveOnce(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if n != batch {
					b.Fatalf("moved %d, want %d", n, batch)
				}
			}
			b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
