package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/worker"
)

// errUnresolved means a pass left orders with transactions nothing could
// classify: an operator decides (README, "Reconciliation").
var errUnresolved = errors.New("orders need an operator")

// reconcileConfig is `worker reconcile`'s command line.
type reconcileConfig struct {
	conn      connFlags
	since     string
	dryRun    bool
	api       apiFlags
	overlap   time.Duration
	retention time.Duration
}

func newReconcileFlags(c *reconcileConfig, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("worker reconcile", getenv, out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: worker reconcile -rules F -cobo-api-secret-file F [flags]

Runs one reconciliation pass with Cobo's order list, as the workers do,
printing each order found missing and then a summary as JSON lines.

Flags:
`)
		fs.PrintDefaults()
	}
	c.conn.define(fs)
	fs.FlagSet.StringVar(&c.since, "since", "", "look back to this RFC 3339 time, or this long ago (e.g. 48h), instead of the reconciled point minus the overlap")
	fs.FlagSet.BoolVar(&c.dryRun, "dry-run", false, "print what is missing, apply nothing, keep the point")
	c.api.define(fs, "the workers' allocation rules file (required: it comes with their Cobo API credentials)", "")
	fs.DurationTo(&c.overlap, "reconcile-overlap", "PAYSTREAM_RECONCILE_OVERLAP", reconcile.DefaultOverlap, "how far before the reconciled point the pass looks again")
	fs.DurationTo(&c.retention, "retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "the workers' -retention: -since may look back at most this minus a day")
	return fs
}

// validate checks the rules between flags; each error names the flags.
func (c reconcileConfig) validate() error {
	switch {
	case c.api.rulesFile == "":
		return errors.New("worker reconcile needs the workers' -rules and -cobo-api-secret-file: it reads Cobo's orders with their API key and plans what a repaired order allocates by their rules")
	case c.overlap < 0:
		return fmt.Errorf("-reconcile-overlap must not be negative, got %s", c.overlap)
	}
	return nil
}

// passOptions reads -since and -dry-run as of now.
func (c reconcileConfig) passOptions(now time.Time) (reconcile.PassOptions, error) {
	opts := reconcile.PassOptions{DryRun: c.dryRun}
	if c.since == "" {
		return opts, nil
	}
	t, err := replay.ParseTime(c.since, now)
	if err != nil {
		return opts, fmt.Errorf("-since: %w", err)
	}
	if t.After(now) {
		return opts, fmt.Errorf("-since: %s is in the future", t.Format(time.RFC3339))
	}
	opts.Since = t
	return opts, nil
}

// runReconcile is `worker reconcile`: one reconciliation pass with Cobo's
// order list, by hand, printing each order found missing and then a
// summary as JSON lines.
func runReconcile(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c reconcileConfig
	if err := parseArgs(newReconcileFlags(&c, getenv, stderr), args); err != nil {
		return err
	}
	opts, err := c.passOptions(time.Now())
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	rcfg := reconcile.Config{Overlap: c.overlap, Retention: events.Retention{Keep: c.retention}}
	if err := rcfg.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("%w: -retention: %w", errUsage, err)
	}
	if !opts.Since.IsZero() {
		// Never past the horizon: an order whose state expired must not
		// be planned again from Cobo's list.
		if err := rcfg.CheckSince(opts.Since, time.Now()); err != nil {
			return fmt.Errorf("%w: -since: %w", errUsage, err)
		}
	}
	if err := c.api.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	plan, err := c.api.plan()
	if err != nil {
		return err
	}
	// The workers' batching flags do not matter here: their batchers
	// deliver what a repair plans.
	alloc := &worker.AllocationConfig{Rules: plan.Rules, Cobo: plan.Cobo, Reconcile: rcfg}
	nc, js, err := c.conn.connect(ctx, "paystream-reconcile", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	r, err := worker.NewReconciler(ctx, worker.ReconcilerConfig{JetStream: js, Allocation: alloc, Logger: zerolog.Nop()})
	if err != nil {
		return nameFlags(err)
	}
	enc := json.NewEncoder(stdout)
	opts.Report = func(f reconcile.Finding) error { return enc.Encode(f) }
	sum, passErr := r.Pass(ctx, opts)
	if err := enc.Encode(struct {
		Summary reconcile.Summary `json:"summary"`
	}{sum}); err != nil {
		return err
	}
	if passErr != nil {
		return passErr
	}
	if sum.Unresolved > 0 {
		return fmt.Errorf("%w: %d orders keep transactions that were not credited (see \"unclassified\")", errUnresolved, sum.Unresolved)
	}
	return nil
}
