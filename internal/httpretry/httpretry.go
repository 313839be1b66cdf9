// Package httpretry is what paystream's provider clients (internal/cobo,
// internal/bitgo) share about calling an HTTP API: the transport, how many
// tries one call gets, the backoff between them and the bound of one
// exchange, with their defaults and checks in one place.
package httpretry

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/paystream/paystream/internal/backoff"
)

// Defaults of Config's fields, for a provider that has no reason to differ.
const (
	DefaultMaxAttempts    = 5
	DefaultBackoffBase    = 200 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
	DefaultAttemptTimeout = 10 * time.Second
)

// Config is the base of a provider client's configuration: the HTTP and
// retry settings. A provider's config embeds it (cobo.ClientConfig,
// bitgo.Config), so that its fields read as the provider config's own
// (cfg.MaxAttempts); a composite literal names it, as in
// cobo.ClientConfig{BaseURL: u, Config: httpretry.Config{MaxAttempts: 1}}.
// The provider applies WithDefaults, with its own defaults where they
// differ, and Validate, and uses Backoff and Attempt in its calls.
type Config struct {
	// HTTP is the transport; the provider's default client when nil.
	HTTP *http.Client
	// MaxAttempts bounds the tries of one call (on 5xx, 429 and transport
	// errors and timeouts); at least 1.
	MaxAttempts int
	// BackoffBase and BackoffMax bound the jittered, doubling delay
	// between tries (backoff.UpperHalf: concurrent clients do not retry in
	// step); 0 < BackoffBase <= BackoffMax.
	BackoffBase, BackoffMax time.Duration
	// AttemptTimeout bounds one HTTP exchange; positive.
	AttemptTimeout time.Duration
}

// WithDefaults returns a copy with zero fields set from d, and from the
// Default constants where d's are zero too; a nil HTTP becomes d.HTTP, or
// a fresh client when that is nil too.
func (c Config) WithDefaults(d Config) Config {
	if c.HTTP == nil {
		c.HTTP = d.HTTP
		if c.HTTP == nil {
			c.HTTP = &http.Client{}
		}
	}
	c.MaxAttempts = cmp.Or(c.MaxAttempts, d.MaxAttempts, DefaultMaxAttempts)
	c.BackoffBase = cmp.Or(c.BackoffBase, d.BackoffBase, DefaultBackoffBase)
	c.BackoffMax = cmp.Or(c.BackoffMax, d.BackoffMax, DefaultBackoffMax)
	c.AttemptTimeout = cmp.Or(c.AttemptTimeout, d.AttemptTimeout, DefaultAttemptTimeout)
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
