package backoff_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/backoff"
)

func TestDelayDoublesToTheCap(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Base: time.Second, Max: 10 * time.Second}
	var got []time.Duration
	for n := 0; n <= 7; n++ {
		got = append(got, p.Delay(n))
	}
	require.Equal(t, []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}, got)
	require.Equal(t, 10*time.Second, p.Delay(1<<30), "a huge n neither overflows nor loops long")
	require.Zero(t, backoff.Policy{}.Delay(3))
}

func TestJitterStaysInItsBand(t *testing.T) {
	t.Parallel()
	for n := 1; n <= 6; n++ {
		plain := backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second}.Delay(n)
		seen := map[time.Duration]bool{}
		for range 200 {
			fifth := backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second, Jitter: backoff.AddFifth}.Delay(n)
			require.GreaterOrEqual(t, fifth, plain)
			require.LessOrEqual(t, fifth, plain+plain/5)
			half := backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second, Jitter: backoff.UpperHalf}.Delay(n)
			require.GreaterOrEqual(t, half, plain/2)
			require.LessOrEqual(t, half, plain)
			seen[half] = true
		}
		require.Greater(t, len(seen), 1, "jitter varies")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, backoff.Policy{Base: time.Second, Max: time.Second}.Validate())
	for _, p := range []backoff.Policy{{}, {Base: -time.Second, Max: time.Second}, {Base: 2 * time.Second, Max: time.Second}} {
		require.ErrorIs(t, p.Validate(), backoff.ErrInvalid, "%+v", p)
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	require.NoError(t, backoff.Wait(context.Background(), time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	err := backoff.Wait(ctx, time.Hour)
	require.True(t, errors.Is(err, context.Canceled))
	require.Less(t, time.Since(start), time.Second)
}
