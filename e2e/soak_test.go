//go:build soak

package e2e

import (
	"testing"
	"time"
)

// TestBacklogMillionHeldSnapshot: 1,000,000 outbox rows drained by the relay
// while a REPEATABLE READ transaction holds the xmin horizon back the whole
// time (so every deleted outbox row stays as a dead tuple the claim query
// must step over). The relay must keep moving (no minute without progress)
// and drain everything exactly once; the rate is logged.
func TestBacklogMillionHeldSnapshot(t *testing.T) {
	runBacklog(t, 1_000_000, time.Minute, 45*time.Minute)
}

// TestSoakSustainedLoad: three minutes at 2,000 events/s (batches of 100)
// with a query every 200ms and an export every 5s, all on loopback. Zero
// errors, outbox lag under 5s, RSS growth after warm-up under 64 MiB.
func TestSoakSustainedLoad(t *testing.T) {
	runLoad(t, loadParams{
		Duration:        3 * time.Minute,
		EventsPerSecond: 2000,
		BatchSize:       100,
		QueryEvery:      200 * time.Millisecond,
		ExportEvery:     5 * time.Second,
		MaxOutboxAge:    5 * time.Second,
		MaxRSSGrowth:    64 << 20,
	})
}
