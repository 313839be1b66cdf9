// Package httpretry is what paystream's provider clients (internal/cobo,
// internal/bitgo) share about calling an HTTP API: the transport, how many
// tries one call gets, the backoff between them and the bound of one
// exchange, with their defaults and checks in one place.
package httpretry

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/paystream/paystream/internal/backoff"
)

// Config is the base of a provider client's configuration: the HTTP and
// retry settings. The provider's config carries the same fields by name
// (cobo.ClientConfig, bitgo.Config) and hands them over with its Retry
// method, so that callers keep setting them as before.
type Config struct {
	// HTTP is the transport; the default's client when nil.
	HTTP *http.Client
	// MaxAttempts bounds the tries of one call.
	MaxAttempts int
	// BackoffBase and BackoffMax bound the jittered, doubling delay
	// between tries (backoff.UpperHalf: concurrent clients do not retry in
	// step).
	BackoffBase, BackoffMax time.Duration
	// AttemptTimeout bounds one HTTP exchange.
	AttemptTimeout time.Duration
}

// WithDefaults returns a copy with zero fields set from d; a nil HTTP
// becomes d.HTTP, or a fresh client when that is nil too.
func (c Config) WithDefaults(d Config) Config {
	if c.HTTP == nil {
		c.HTTP = d.HTTP
		if c.HTTP == nil {
			c.HTTP = &http.Client{}
		}
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = d.MaxAttempts
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = d.BackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = d.BackoffMax
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = d.AttemptTimeout
	}
	return c
}

// Validate reports the first invalid field by name.
func (c Config) Validate() error {
	switch {
	case c.HTTP == nil:
		return fmt.Errorf("HTTP is required")
	case c.MaxAttempts < 1:
		return fmt.Errorf("MaxAttempts must be at least 1, got %d", c.MaxAttempts)
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("BackoffBase must be positive and at most BackoffMax, got %s and %s", c.BackoffBase, c.BackoffMax)
	case c.AttemptTimeout <= 0:
		return fmt.Errorf("AttemptTimeout must be positive, got %s", c.AttemptTimeout)
	}
	return nil
}

// Backoff is the wait before retry n (from 1): BackoffBase doubling,
// capped at BackoffMax, jittered over its upper half.
func (c Config) Backoff(n int) time.Duration {
	return backoff.Policy{Base: c.BackoffBase, Max: c.BackoffMax, Jitter: backoff.UpperHalf}.Delay(n)
}

// Attempt returns ctx bounded by AttemptTimeout, for one exchange.
func (c Config) Attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.AttemptTimeout)
}
