package app

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestInterrupts: the first signal cancels the context (a graceful stop),
// the second exits at once with 128 + the signal's number. SIGUSR1 stands
// in for SIGTERM so the test process is never at risk.
func TestInterrupts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan int, 1)
	in := watchInterrupts(cancel, slog.New(slog.DiscardHandler), func(code int) { exited <- code }, syscall.SIGUSR1)
	defer in.stop()

	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first signal did not cancel the context")
	}
	select {
	case code := <-exited:
		t.Fatalf("exited (%d) on the first signal", code)
	case <-time.After(100 * time.Millisecond):
	}

	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case code := <-exited:
		require.Equal(t, 128+int(syscall.SIGUSR1), code)
	case <-time.After(5 * time.Second):
		t.Fatal("the second signal did not exit")
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	require.Equal(t, 130, exitCode(syscall.SIGINT))
	require.Equal(t, 143, exitCode(syscall.SIGTERM))
}
