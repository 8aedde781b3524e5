package partitions

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind (the scheduler's
// above all).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
