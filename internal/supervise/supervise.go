// Package supervise runs a process's long-running components as one group:
// they start together, the first to end stops the others, and the group
// says at any moment whether every component is still running, for a
// readiness probe.
//
// A component is expected to run until its context ends. One that returns
// earlier, with an error or without, has stopped doing its work while the
// process would otherwise run on looking healthy; the group then stops the
// others and reports it, so that the process exits non-zero and its own
// supervisor (systemd, Kubernetes, Compose) restarts it.
//
// golang.org/x/sync/errgroup does the first part only: it neither treats a
// nil return as an end, nor says which components are alive, nor bounds
// the wait for the others to stop.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Errors of Run and Alive, matched with errors.Is.
var (
	// ErrEnded means a component returned before the group was stopped.
	ErrEnded = errors.New("ended unexpectedly")
	// ErrStopTimeout means components were still running when the soft
	// stop's time was up; the caller stops them hard (e.g. by closing the
	// connection they use).
	ErrStopTimeout = errors.New("did not stop in time")
	// ErrNotStarted is what Alive reports before Run started the
	// components.
	ErrNotStarted = errors.New("not started yet")
	// ErrNotRunning is what Alive reports once a component has ended.
	ErrNotRunning = errors.New("not running")
)

// Component states.
const (
	notStarted int32 = iota
	running
	ended
)

type component struct {
	name  string
	run   func(ctx context.Context) error
	state atomic.Int32
}

// Group is a set of components run together. Add every component, then
// call Run once; Alive may be called at any time from any goroutine.
type Group struct {
	log   zerolog.Logger
	comps []*component
}

// New returns an empty group that logs through log the component that
// ended first.
func New(log zerolog.Logger) *Group { return &Group{log: log} }

// Add registers a component under name. run must return soon after its
// context ends, and not before. Add must not be called once Run started.
func (g *Group) Add(name string, run func(ctx context.Context) error) {
	g.comps = append(g.comps, &component{name: name, run: run})
}

// Names lists the components in the order they were added.
func (g *Group) Names() []string {
	names := make([]string, len(g.comps))
	for i, c := range g.comps {
		names[i] = c.name
	}
	return names
}

type result struct {
	c   *component
	err error
}

// Run starts every component and returns once all of them have returned,
// or stopTimeout after the stop began. The stop begins when ctx ends (a
// requested stop) or when a component returns first (a failure); every
// component's context is then cancelled, which is the soft stop.
//
// It returns nil when ctx ended and every component returned nil in time.
// Otherwise the error joins: the first component to return early, wrapping
// ErrEnded and what it returned; any component's error; and, when some
// are still running after stopTimeout, ErrStopTimeout naming them.
func (g *Group) Run(ctx context.Context, stopTimeout time.Duration) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, len(g.comps))
	for _, c := range g.comps {
		c.state.Store(running)
		go func() {
			err := c.run(cctx)
			c.state.Store(ended)
			results <- result{c, err}
		}()
	}
	left := len(g.comps)
	var errs []error
	select {
	case <-ctx.Done():
	case r := <-results:
		left--
		// ctx may have ended at the same moment: then this is the
		// requested stop, not a failure.
		if ctx.Err() == nil {
			err := fmt.Errorf("%s %w", r.c.name, ErrEnded)
			if r.err != nil {
				err = fmt.Errorf("%s %w: %w", r.c.name, ErrEnded, r.err)
			}
			g.log.Error().Err(err).Strs("stopping", g.running()).Msg("a component ended; stopping the others")
			errs = append(errs, err)
		} else if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.c.name, r.err))
		}
	}
	cancel()
	timeout := time.NewTimer(stopTimeout)
	defer timeout.Stop()
	for ; left > 0; left-- {
		select {
		case r := <-results:
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.c.name, r.err))
			}
		case <-timeout.C:
			errs = append(errs, fmt.Errorf("%s %w (%s)", strings.Join(g.running(), ", "), ErrStopTimeout, stopTimeout))
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}

// Alive returns nil while every component runs, and otherwise an error
// naming the first one that does not: it wraps ErrNotStarted before Run,
// and ErrNotRunning once a component has ended.
func (g *Group) Alive() error {
	for _, c := range g.comps {
		switch c.state.Load() {
		case notStarted:
			return fmt.Errorf("%s %w", c.name, ErrNotStarted)
		case ended:
			return fmt.Errorf("%s %w: it ended", c.name, ErrNotRunning)
		}
	}
	return nil
}

func (g *Group) running() []string {
	var names []string
	for _, c := range g.comps {
		if c.state.Load() == running {
			names = append(names, c.name)
		}
	}
	return names
}
