package supervise_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/supervise"
)

// untilStopped is a well-behaved component: it runs until its context
// ends, and counts on stopped when it did.
func untilStopped(stopped chan<- string, name string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		stopped <- name
		return nil
	}
}

// runGroup runs g in the background; the returned channel gets Run's
// error.
func runGroup(t *testing.T, ctx context.Context, g *supervise.Group, stopTimeout time.Duration) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx, stopTimeout) }()
	return done
}

func waitAlive(t *testing.T, g *supervise.Group) {
	t.Helper()
	require.Eventually(t, func() bool { return g.Alive() == nil }, 5*time.Second, time.Millisecond)
}

func TestRequestedStopEndsEveryComponent(t *testing.T) {
	t.Parallel()
	g := supervise.New(zerolog.Nop())
	stopped := make(chan string, 2)
	g.Add("a", untilStopped(stopped, "a"))
	g.Add("b", untilStopped(stopped, "b"))
	require.Equal(t, []string{"a", "b"}, g.Names())
	require.ErrorIs(t, g.Alive(), supervise.ErrNotStarted, "not ready before it runs")
	require.EqualError(t, g.Alive(), "a not started yet")

	ctx, cancel := context.WithCancel(context.Background())
	done := runGroup(t, ctx, g, 5*time.Second)
	waitAlive(t, g)
	cancel()
	require.NoError(t, <-done)
	require.ElementsMatch(t, []string{"a", "b"}, []string{<-stopped, <-stopped})
	require.ErrorIs(t, g.Alive(), supervise.ErrNotRunning)
}

func TestAComponentThatEndsStopsTheOthers(t *testing.T) {
	t.Parallel()
	cause := errors.New("consumer deleted")
	for _, tc := range []struct {
		name string
		err  error
	}{{"without an error", nil}, {"with an error", cause}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := supervise.New(zerolog.Nop())
			stopped := make(chan string, 1)
			end := make(chan struct{})
			g.Add("steady", untilStopped(stopped, "steady"))
			g.Add("flaky", func(context.Context) error {
				<-end
				return tc.err
			})
			done := runGroup(t, context.Background(), g, 5*time.Second)
			waitAlive(t, g)
			close(end)

			err := <-done
			require.ErrorIs(t, err, supervise.ErrEnded)
			require.ErrorContains(t, err, "flaky ended unexpectedly")
			if tc.err != nil {
				require.ErrorIs(t, err, cause)
			}
			require.Equal(t, "steady", <-stopped, "the others are stopped softly")
			require.ErrorContains(t, g.Alive(), "steady not running: it ended")
		})
	}
}

func TestAliveNamesTheComponentThatEnded(t *testing.T) {
	t.Parallel()
	g := supervise.New(zerolog.Nop())
	end := make(chan struct{})
	release := make(chan struct{})
	g.Add("steady", func(ctx context.Context) error {
		<-ctx.Done()
		// Held past the failure, so that Alive is read while the stop is
		// under way.
		<-release
		return nil
	})
	g.Add("flaky", func(context.Context) error { <-end; return nil })
	done := runGroup(t, context.Background(), g, 5*time.Second)
	waitAlive(t, g)
	close(end)
	require.Eventually(t, func() bool {
		err := g.Alive()
		return err != nil && err.Error() == "flaky not running: it ended"
	}, 5*time.Second, time.Millisecond, "not ready from the moment one component ended")
	close(release)
	require.ErrorIs(t, <-done, supervise.ErrEnded)
}

func TestStopIsBoundedByTheTimeout(t *testing.T) {
	t.Parallel()
	g := supervise.New(zerolog.Nop())
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	g.Add("stuck", func(context.Context) error { <-release; return nil })
	g.Add("failing stop", func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("flush failed")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := runGroup(t, ctx, g, 100*time.Millisecond)
	waitAlive(t, g)
	start := time.Now()
	cancel()
	err := <-done
	require.Less(t, time.Since(start), 2*time.Second)
	require.ErrorIs(t, err, supervise.ErrStopTimeout)
	require.ErrorContains(t, err, "stuck did not stop in time (100ms)")
	require.ErrorContains(t, err, "failing stop: flush failed", "an error returned on the way out is reported too")
	require.NotErrorIs(t, err, supervise.ErrEnded, "a requested stop is no failure")
}

func TestAnEmptyGroupRunsUntilStopped(t *testing.T) {
	t.Parallel()
	g := supervise.New(zerolog.Nop())
	require.NoError(t, g.Alive())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	require.NoError(t, g.Run(ctx, time.Second))
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
}
