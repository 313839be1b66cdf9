package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
)

// ReconcilerConfig configures a Reconciler outside a worker process
// (`worker reconcile`).
type ReconcilerConfig struct {
	// JetStream reaches the orders, outbox and reconcile buckets and the
	// intent stream, all of which a worker with rules creates. Required.
	JetStream jetstream.JetStream
	// Allocation must be what the workers run with: its Rules plan what a
	// repaired order allocates, its Cobo client lists the orders, and its
	// Reconcile settings (overlap, lookback, page size) apply. Required:
	// without Cobo API credentials there is nothing to reconcile with.
	Allocation *AllocationConfig
	// Logger gets the lines a worker would log.
	Logger zerolog.Logger
}

// Validate reports the first invalid field by name.
func (c ReconcilerConfig) Validate() error {
	switch {
	case c.JetStream == nil:
		return errors.New("JetStream is required")
	case c.Allocation == nil:
		return errors.New("Allocation is required: reconciliation reads Cobo's orders with the workers' API credentials")
	}
	return nil
}

// NewReconciler returns the Reconciler the workers run, for one pass by
// hand: it binds the existing buckets and intent stream (creating none),
// and applies orders through the apply core, wired as the workers' is.
func NewReconciler(ctx context.Context, cfg ReconcilerConfig) (*reconcile.Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reconciler config: %w", err)
	}
	// No verifier: this core only reconciles, it never processes an event.
	acfg := apply.Config{ReconcileOnly: true, Allocation: cfg.Allocation.Plan(), Logger: cfg.Logger}
	if err := acfg.Validate(); err != nil {
		return nil, fmt.Errorf("reconciler config: %w", err)
	}
	client, err := cobo.NewClient(cfg.Allocation.Cobo)
	if err != nil {
		return nil, fmt.Errorf("reconciler config: %w", &ConfigError{Field: "Allocation.Cobo", Err: fmt.Errorf("Allocation.Cobo: %w", err)})
	}
	kv, err := cfg.JetStream.KeyValue(ctx, events.OrdersBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", events.OrdersBucket, err)
	}
	orders, err := events.OpenOrderStore(ctx, cfg.JetStream, kv, events.StreamConfig{Retention: cfg.Allocation.Reconcile.Retention, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	p, err := apply.Open(ctx, cfg.JetStream, orders, acfg)
	if err != nil {
		return nil, err
	}
	points, err := reconcile.OpenBucket(ctx, cfg.JetStream)
	if err != nil {
		return nil, err
	}
	rcfg := cfg.Allocation.Reconcile
	rcfg.Logger = cfg.Logger
	return reconcile.New(points, client, orders, p, rcfg)
}
