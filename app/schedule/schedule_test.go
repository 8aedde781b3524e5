package schedule

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/auditlog/auditlog/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A panicking job is recovered and logged, the schedule goes on (cron's
// skip wrapper would skip every tick after a panic passing through it), and
// once stopped nothing of the scheduler is left running (goleak).
func TestPanicRecoveredAndStopIsComplete(t *testing.T) {
	var log syncbuf.Buffer
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
