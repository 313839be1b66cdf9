package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/reconcile"
)

// Reconcile applies an order this process read from Cobo's order API with
// its own API key (a reconciliation pass) through the path every event
// takes: the handlers' core (handlers.Handler.Reconcile: the same
// merge, compare-and-set and planning as a webhook, the order counting as
// confirmed by Cobo), then the outbox publish of the order's still-planned
// items, so that what it planned is delivered like what an event plans.
// Nothing is read from NATS, so there is no signature to verify: the data
// must come from the process's own signed API call, never from a message.
// Errors are as for Process.
func (p *Processor) Reconcile(ctx context.Context, d cobo.OrderData) (handlers.Outcome, error) {
	out, err := p.handler.Reconcile(ctx, d)
	if err != nil {
		return out, err
	}
	if p.alloc != nil {
		for _, it := range out.Planned {
			p.alloc.ItemPlanned(it)
		}
	}
	if p.outbox != nil && out.Order != nil {
		if _, err := p.outbox.Publish(ctx, out.Order); err != nil {
			return out, err
		}
	}
	p.report(p.log.With().Str("order_id", d.OrderID).Str("source", "reconcile").Logger(), out)
	return out, nil
}

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
	case c.Allocation.Rules == nil:
		return errors.New("Allocation.Rules is required")
	case c.Allocation.Cobo.Signer == nil:
		return errors.New("Allocation.Cobo.Signer is required")
	}
	return nil
}

// NewReconciler returns the Reconciler the workers run, for one pass by
// hand: it binds the existing buckets and intent stream (creating none),
// and applies orders through a Processor wired as the workers' is.
func NewReconciler(ctx context.Context, cfg ReconcilerConfig) (*reconcile.Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reconciler config: %w", err)
	}
	kv, err := cfg.JetStream.KeyValue(ctx, events.OrdersBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", events.OrdersBucket, err)
	}
	if _, err := cfg.JetStream.Stream(ctx, allocation.IntentStream); err != nil {
		return nil, fmt.Errorf("allocation intent stream %s: %w (has a worker with -rules run yet?)", allocation.IntentStream, err)
	}
	points, err := reconcile.OpenBucket(ctx, cfg.JetStream)
	if err != nil {
		return nil, err
	}
	client, err := cobo.NewClient(cfg.Allocation.Cobo)
	if err != nil {
		return nil, err
	}
	rcfg := cfg.Allocation.Reconcile
	orders, err := events.OpenOrderStore(ctx, cfg.JetStream, kv, events.StreamConfig{Retention: rcfg.Retention, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	// No verifier: this Processor only reconciles, it never processes an
	// event.
	p := newProcessor(nil, orders, cfg.JetStream, cfg.Allocation.Rules, client, cfg.Logger)
	rcfg.Logger = cfg.Logger
	return reconcile.New(points, client, orders, p, rcfg)
}
