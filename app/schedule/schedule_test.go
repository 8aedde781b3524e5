package schedule

import (
	"bytes"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for cron's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A panicking job is recovered and logged, the schedule goes on (cron's
// skip wrapper would skip every tick after a panic passing through it), and
// once stopped nothing of the scheduler is left running (goleak).
func TestPanicRecoveredAndStopIsComplete(t *testing.T) {
	var log syncBuffer
	c, chain, stopped := New(slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})), "test")
	every, err := cron.ParseStandard("@every 1s")
	require.NoError(t, err)
	var runs atomic.Int32
	c.Schedule(every, chain.Then(cron.FuncJob(func() {
		runs.Add(1)
		panic("boom")
	})))
	c.Start()
	require.Eventually(t, func() bool { return runs.Load() >= 2 }, 10*time.Second, 10*time.Millisecond,
		"the schedule stops after a panic")
	<-c.Stop().Done()
	<-stopped
	require.Contains(t, log.String(), "test: cron panic")
}
