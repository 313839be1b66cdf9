package httpretry_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/httpretry"
)

func TestWithDefaultsAndValidate(t *testing.T) {
	t.Parallel()
	defaults := httpretry.Config{MaxAttempts: 5, BackoffBase: 200 * time.Millisecond, BackoffMax: 5 * time.Second, AttemptTimeout: 10 * time.Second}
	c := httpretry.Config{MaxAttempts: 2}.WithDefaults(defaults)
	require.NotNil(t, c.HTTP)
	require.Equal(t, 2, c.MaxAttempts, "a set field is kept")
	require.Equal(t, 200*time.Millisecond, c.BackoffBase)
	require.NoError(t, c.Validate())

	zero := httpretry.Config{}.WithDefaults(httpretry.Config{AttemptTimeout: time.Minute})
	require.Equal(t, httpretry.Config{HTTP: zero.HTTP, MaxAttempts: httpretry.DefaultMaxAttempts, BackoffBase: httpretry.DefaultBackoffBase,
		BackoffMax: httpretry.DefaultBackoffMax, AttemptTimeout: time.Minute}, zero, "the package's defaults fill what d leaves zero")

	own := &http.Client{Timeout: time.Second}
	require.Same(t, own, httpretry.Config{HTTP: own}.WithDefaults(defaults).HTTP)

	for field, bad := range map[string]httpretry.Config{
		"MaxAttempts":    {HTTP: own, MaxAttempts: 0, BackoffBase: 1, BackoffMax: 1, AttemptTimeout: 1},
		"BackoffBase":    {HTTP: own, MaxAttempts: 1, BackoffBase: 2, BackoffMax: 1, AttemptTimeout: 1},
		"AttemptTimeout": {HTTP: own, MaxAttempts: 1, BackoffBase: 1, BackoffMax: 1},
		"HTTP":           {MaxAttempts: 1, BackoffBase: 1, BackoffMax: 1, AttemptTimeout: 1},
	} {
		require.ErrorContains(t, bad.Validate(), field)
	}
}

func TestBackoffIsJitteredBelowTheCap(t *testing.T) {
	t.Parallel()
	c := httpretry.Config{BackoffBase: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond}
	for n := 1; n <= 5; n++ {
		d := c.Backoff(n)
		want := min(100*time.Millisecond<<(n-1), 400*time.Millisecond)
		require.GreaterOrEqual(t, d, want/2)
		require.LessOrEqual(t, d, want)
	}
}
