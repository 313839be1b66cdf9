package testutil

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/supervise"
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
	return RunWorkers(t, cfg)[0]
}

// RunWorkers is RunWorker for several workers started at the same moment,
// as a deployment's replicas are: their start-ups race each other.
func RunWorkers(t testing.TB, cfgs ...worker.Config) []*RunningWorker {
	t.Helper()
	started := make([]*worker.Worker, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started[i], errs[i] = worker.Start(context.Background(), cfg)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, w := range started {
			if w != nil {
				w.Kill()
			}
		}
		require.NoError(t, err, "start workers")
	}
	out := make([]*RunningWorker, len(started))
	for i, w := range started {
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
		out[i] = r
	}
	// Run starts the components in its own goroutine: a test's first probe
	// of /readyz must find them running.
	for _, w := range started {
		require.Eventually(t, func() bool { return !errors.Is(w.Ready(context.Background()), supervise.ErrNotStarted) },
			10*time.Second, time.Millisecond, "the worker's components start")
	}
	return out
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
