// Package backoff computes how long to wait before trying again: a delay
// doubling from a base to a cap, with optional jitter. It is the one
// backoff of paystream's retries: event redeliveries, the Cobo and BitGo
// clients' retries, and the allocation senders' tries.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Jitter says how a delay is randomised so that retries started together
// drift apart.
type Jitter int

// Jitters.
const (
	// None waits exactly the delay.
	None Jitter = iota
	// AddFifth waits the delay plus up to a fifth of it: never less than
	// the delay, so a cap stays a floor for the next step.
	AddFifth
	// UpperHalf waits between half the delay and the delay, uniformly:
	// never more than the cap.
	UpperHalf
)

// ErrInvalid is wrapped by Validate's errors.
var ErrInvalid = errors.New("invalid backoff")

// Policy is a doubling backoff: Base after the first failure, doubling
// with each further one, capped at Max, then jittered.
type Policy struct {
	// Base is the delay after the first failure.
	Base time.Duration
	// Max caps the delay before jitter.
	Max time.Duration
	// Jitter randomises each delay.
	Jitter Jitter
}

// Validate reports a Base that is not positive or a Max below it.
func (p Policy) Validate() error {
	if p.Base <= 0 || p.Max < p.Base {
		return fmt.Errorf("%w: base must be positive and at most the cap, got %s and %s", ErrInvalid, p.Base, p.Max)
	}
	return nil
}

// Delay returns the wait after the n-th failure (n from 1; below 1 counts
// as 1): Base doubled n−1 times, capped at Max, then jittered. A Base of
// 0 or less gives 0; see Validate.
func (p Policy) Delay(n int) time.Duration {
	d := p.Base
	if d <= 0 {
		return 0
	}
	// Doubling stops at the cap, so a large n cannot overflow.
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	switch p.Jitter {
	case AddFifth:
		return d + time.Duration(rand.Int64N(int64(d)/5+1))
	case UpperHalf:
		return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	}
	return d
}

// Wait waits d, or until ctx is done, when it returns ctx's error.
func Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
