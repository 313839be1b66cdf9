package reconcile_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
)

// horizonCfg is a retention of 10 days with a margin of one: passes look
// back at most 9 days.
var horizonCfg = events.Retention{Keep: 10 * 24 * time.Hour, Margin: 24 * time.Hour}

// TestSinceBeforeTheHorizonIsRefused: a pass asked to look back past the
// retention minus the margin refuses before listing anything; one just
// inside it runs.
func TestSinceBeforeTheHorizonIsRefused(t *testing.T) {
	f := newFixture(t)
	r := f.reconciler(t, reconcile.Config{Retention: horizonCfg})
	now := time.Now()
	_, err := r.Pass(context.Background(), reconcile.PassOptions{Since: now.Add(-9*24*time.Hour - time.Minute)})
	require.ErrorIs(t, err, reconcile.ErrBeyondHorizon)
	require.Zero(t, f.lister.pages(), "nothing is listed")

	_, err = r.Pass(context.Background(), reconcile.PassOptions{Since: now.Add(-9*24*time.Hour + time.Minute)})
	require.NoError(t, err)

	cfg := reconcile.Config{Retention: horizonCfg}
	require.ErrorIs(t, cfg.CheckSince(now.Add(-9*24*time.Hour-time.Second), now), reconcile.ErrBeyondHorizon)
	require.NoError(t, cfg.CheckSince(now.Add(-9*24*time.Hour+time.Second), now))
	require.ErrorIs(t, reconcile.Config{}.CheckSince(now.Add(-90*24*time.Hour), now), reconcile.ErrBeyondHorizon, "the default retention, 90 days")
}

// TestPeriodicPassStaysInsideTheHorizon: with a reconciled point older
// than the horizon (passes off for a while), a periodic pass starts at
// the horizon: orders changed only before it are not looked at (their
// state may have expired, and applying Cobo's copy would plan them
// again), those after it are repaired, and the point moves on, the
// ground before the horizon being no gap.
func TestPeriodicPassStaysInsideTheHorizon(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for i, age := range []time.Duration{2 * 24 * time.Hour, 8 * 24 * time.Hour, 9*24*time.Hour + time.Hour, 12 * 24 * time.Hour} {
		at := now.Add(-age)
		f.putOrder(fmt.Sprintf("O-%d", i), at, at)
	}
	f.storePoint(t, now.Add(-20*24*time.Hour))
	r := f.reconciler(t, reconcile.Config{Retention: horizonCfg, PageSize: 2})
	sum, err := r.Pass(context.Background(), reconcile.PassOptions{})
	require.NoError(t, err)
	require.WithinDuration(t, now.Add(-9*24*time.Hour), sum.From, time.Minute, "the pass starts at the horizon")
	require.True(t, f.known(t, "O-0"))
	require.True(t, f.known(t, "O-1"))
	require.False(t, f.known(t, "O-2"), "older than the horizon: never applied")
	require.False(t, f.known(t, "O-3"))
	require.True(t, sum.PointAdvanced, "the point moves past the horizon")
	pt, _, err := r.LoadPoint(context.Background())
	require.NoError(t, err)
	require.True(t, pt.Time.Equal(sum.Start))
}
