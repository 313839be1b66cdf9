package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/worker"
)

// RunningWorker is a real worker started by RunWorker.
type RunningWorker struct {
	W      *worker.Worker
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// RunWorker starts a real worker with cfg and runs it until Stop, Kill or
// the end of the test, whichever comes first; the test fails if it does
// not stop within 15 s.
func RunWorker(t testing.TB, cfg worker.Config) *RunningWorker {
	t.Helper()
	w, err := worker.Start(context.Background(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &RunningWorker{W: w, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = w.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("worker did not stop within 15s")
		}
	})
	return r
}

// Stop stops the worker softly, waits for it and requires a clean exit.
// Calling it again waits for nothing more.
func (r *RunningWorker) Stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		require.NoError(t, r.err)
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not stop within 15s")
	}
}

// Kill drops the worker's connection without acking or draining, as a
// crash would, then lets its goroutines end.
func (r *RunningWorker) Kill() {
	r.W.Kill()
	r.cancel()
}
