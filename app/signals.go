package app

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
)

// interrupts turns SIGINT and SIGTERM into a graceful stop: the first
// cancels the command's context (serve then drains and stops in order); a
// second one, while that stop is running, exits the process at once with
// 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
type interrupts struct {
	ch     chan os.Signal
	cancel context.CancelFunc
	exit   func(code int)
	logger atomic.Pointer[slog.Logger]
	done   chan struct{}
	once   sync.Once
}

// watchInterrupts starts watching sigs (SIGINT and SIGTERM when none are
// given). logger logs the signals until setLogger replaces it; exit ends the
// process (os.Exit outside tests). stop must be called when done.
func watchInterrupts(cancel context.CancelFunc, logger *slog.Logger, exit func(int), sigs ...os.Signal) *interrupts {
	if len(sigs) == 0 {
		sigs = []os.Signal{os.Interrupt, syscall.SIGTERM}
	}
	in := &interrupts{
		ch:     make(chan os.Signal, 2),
		cancel: cancel,
		exit:   exit,
		done:   make(chan struct{}),
	}
	in.logger.Store(logger)
	signal.Notify(in.ch, sigs...)
	go in.loop()
	return in
}

// setLogger makes later signal messages go to logger (the configured one).
func (in *interrupts) setLogger(logger *slog.Logger) { in.logger.Store(logger) }

// stop stops watching; signals get their default behaviour again.
func (in *interrupts) stop() {
	in.once.Do(func() {
		signal.Stop(in.ch)
		close(in.done)
	})
}

func (in *interrupts) loop() {
	select {
	case sig := <-in.ch:
		in.logger.Load().Info("auditlog: signal received; stopping gracefully (send it again to exit at once)",
			"signal", sig.String())
		in.cancel()
	case <-in.done:
		return
	}
	select {
	case sig := <-in.ch:
		code := exitCode(sig)
		in.logger.Load().Error("auditlog: second signal; exiting at once without finishing the graceful stop",
			"signal", sig.String(), "exit_code", code)
		in.exit(code)
	case <-in.done:
	}
}

// exitCode is the shell's convention for death by signal: 128 + its number.
func exitCode(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}
