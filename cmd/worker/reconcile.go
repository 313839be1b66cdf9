package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/worker"
)

// errUnresolved means a pass left orders with transactions nothing could
// classify: an operator decides (README, "Reconciliation").
var errUnresolved = errors.New("orders need an operator")

// reconcileConfig turns the worker's -reconcile-* flags into the
// reconciler's settings: an interval of 0 turns the periodic passes off.
func reconcileConfig(every, overlap time.Duration) (reconcile.Config, error) {
	switch {
	case every < 0:
		return reconcile.Config{}, fmt.Errorf("-reconcile-every must not be negative (0 turns reconciliation off), got %s", every)
	case overlap < 0:
		return reconcile.Config{}, fmt.Errorf("-reconcile-overlap must not be negative, got %s", overlap)
	}
	return reconcile.Config{Every: every, Off: every == 0, Overlap: overlap}, nil
}

// runReconcile is `worker reconcile`: one reconciliation pass with Cobo's
// order list, by hand, printing each order found missing and then a
// summary as JSON lines.
func runReconcile(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("worker reconcile", getenv, stdout)
	conn := newNATSFlags(fs)
	since := fs.FlagSet.String("since", "", "look back to this RFC 3339 time, or this long ago (e.g. 48h), instead of the reconciled point minus the overlap")
	dryRun := fs.FlagSet.Bool("dry-run", false, "print what is missing, apply nothing, keep the point")
	rulesFile := fs.String("rules", "PAYSTREAM_RULES", "", "the workers' allocation rules file (required: it comes with their Cobo API credentials)")
	coboURL := fs.String("cobo-api-url", "PAYSTREAM_COBO_API_URL", cobo.DevAPIURL, "Cobo API base URL, including /v2")
	coboSecretFile := fs.String("cobo-api-secret-file", "PAYSTREAM_COBO_API_SECRET_FILE", "", "file holding the Cobo API secret (hex Ed25519 seed)")
	overlap := fs.Duration("reconcile-overlap", "PAYSTREAM_RECONCILE_OVERLAP", reconcile.DefaultOverlap, "how far before the reconciled point the pass looks again")
	retention := fs.Duration("retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "the workers' -retention: -since may look back at most this minus a day")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("worker reconcile: unexpected argument %q", fs.Arg(0))
	}
	var opts reconcile.PassOptions
	opts.DryRun = *dryRun
	if *since != "" {
		now := time.Now()
		t, err := replay.ParseTime(*since, now)
		if err != nil {
			return fmt.Errorf("-since: %w", err)
		}
		if t.After(now) {
			return fmt.Errorf("-since: %s is in the future", t.Format(time.RFC3339))
		}
		opts.Since = t
	}
	if *rulesFile == "" {
		return errors.New("worker reconcile needs the workers' -rules and -cobo-api-secret-file: it reads Cobo's orders with their API key and plans what a repaired order allocates by their rules")
	}
	rcfg, err := reconcileConfig(reconcile.DefaultEvery, *overlap)
	if err != nil {
		return err
	}
	rcfg.Retention = events.Retention{Keep: *retention}
	if err := rcfg.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("-retention: %w", err)
	}
	if !opts.Since.IsZero() {
		if err := rcfg.CheckSince(opts.Since, time.Now()); err != nil {
			return fmt.Errorf("-since: %w", err)
		}
	}
	// Batching flags do not matter here: the workers' batchers deliver
	// what a repair plans.
	alloc, err := allocationConfig(*rulesFile, *coboSecretFile, *coboURL, allocation.DefaultBatchMax, allocation.DefaultBatchWait)
	if err != nil {
		return err
	}
	alloc.Reconcile = rcfg
	nc, js, err := conn.connect(ctx, "paystream-reconcile")
	if err != nil {
		return err
	}
	defer nc.Close()
	r, err := worker.NewReconciler(ctx, worker.ReconcilerConfig{JetStream: js, Allocation: alloc, Logger: zerolog.Nop()})
	if err != nil {
		return err
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
