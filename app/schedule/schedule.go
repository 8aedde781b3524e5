// Package schedule builds the cron schedulers of the service's periodic
// jobs (partition maintenance, integrity checkpoints) the same way: UTC,
// specs parsed by config.ScheduleParser, cron's own messages in the slog
// log, a panicking job recovered and logged, a tick skipped while the job's
// previous run still goes, and a way to wait until the scheduler's goroutine
// is gone.
package schedule

import (
	"log/slog"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/auditlog/auditlog/app/config"
)

// New returns a stopped scheduler logging to l with messages prefixed by
// name, and the chain to wrap its jobs in (Recover, SkipIfStillRunning).
// stopped is closed once, after cron.Stop, the scheduler's goroutine has
// logged its last line and returned: cron's Stop does not wait for it.
func New(l *slog.Logger, name string) (c *cron.Cron, chain cron.Chain, stopped <-chan struct{}) {
	logger := cronLogger{l: l, prefix: name + ": cron ", stopped: make(chan struct{}), once: &sync.Once{}}
	c = cron.New(
		cron.WithParser(config.ScheduleParser),
		cron.WithLocation(time.UTC),
		cron.WithLogger(logger),
	)
	// Recover inside SkipIfStillRunning: cron's skip wrapper hands its token
	// back only when the job returns, so a panic passing through it would
	// make it skip every later tick.
	return c, cron.NewChain(cron.SkipIfStillRunning(logger), cron.Recover(logger)), logger.stopped
}

// cronLogger adapts slog to cron.Logger. cron's own chatter (wake, run,
// schedule) goes to debug; its last message, "stop", closes stopped.
type cronLogger struct {
	l       *slog.Logger
	prefix  string
	stopped chan struct{}
	once    *sync.Once
}

func (c cronLogger) Info(msg string, keysAndValues ...any) {
	c.l.Debug(c.prefix+msg, keysAndValues...)
	if msg == "stop" {
		c.once.Do(func() { close(c.stopped) })
	}
}

func (c cronLogger) Error(err error, msg string, keysAndValues ...any) {
	c.l.Error(c.prefix+msg, append([]any{"error", err}, keysAndValues...)...)
}
