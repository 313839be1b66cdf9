package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
)

// Processor applies one stored event the way every worker does: the
// business rules (planning allocations when the fleet has rules), then,
// before the caller acknowledges the event, the outbox publish of the
// order's still-planned allocation items.
//
// The durable consumer runs it for every delivery and `worker replay
// -apply` runs it for the events an operator selects, so both share one
// idempotent path: processing an event whose effect is already committed
// changes nothing, and an item is never planned twice (its id is
// deterministic, it is written in the same compare-and-set as the change
// that caused it, it is the intent's message id, and a claim keeps it in
// one batch). It is safe for concurrent use.
type Processor struct {
	verifier *cobo.Verifier
	handler  *handlers.Handler
	outbox   *allocation.Outbox
	log      zerolog.Logger
	// Set only inside a worker: replay records no metrics and observes
	// nothing.
	metrics  *Metrics
	alloc    *allocation.Metrics
	observer func(ctx context.Context, ev events.Event, out handlers.Outcome) error
}

// ProcessorConfig configures a Processor outside a worker process.
type ProcessorConfig struct {
	// Verifier re-checks each event's stored Cobo signature before it may
	// change anything: the workers' trusted keys. Required.
	Verifier *cobo.Verifier
	// JetStream reaches the intent stream when Allocation is set. Required.
	JetStream jetstream.JetStream
	// Orders is the order-state store. Required.
	Orders *events.OrderStore
	// Allocation must be what the workers run with: its Rules plan items
	// and its Cobo client fetches orders the rules need; Batcher and BitGo
	// are not used (the workers' batchers deliver what is published). nil
	// keeps order state only, which is only right when the workers run
	// without rules: otherwise an order could reach Completed here without
	// its splits being planned.
	Allocation *AllocationConfig
	// Logger gets the lines a worker would log for the same event.
	Logger zerolog.Logger
}

// Validate reports the first invalid field by name.
func (c ProcessorConfig) Validate() error {
	switch {
	case c.Verifier == nil:
		return errors.New("Verifier is required: events are re-verified before they change anything")
	case c.JetStream == nil:
		return errors.New("JetStream is required")
	case c.Orders == nil:
		return errors.New("Orders is required")
	case c.Allocation != nil && c.Allocation.Rules == nil:
		return errors.New("Allocation.Rules is required")
	case c.Allocation != nil && c.Allocation.Cobo.Signer == nil:
		return errors.New("Allocation.Cobo.Signer is required")
	}
	return nil
}

// NewProcessor returns the Processor the workers run, for use outside a
// worker. With Allocation set, the allocation intent stream must exist
// already (a worker with rules creates it): it is not created here, since
// that would also reconfigure the batchers' shared consumers.
func NewProcessor(ctx context.Context, cfg ProcessorConfig) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("processor config: %w", err)
	}
	a := cfg.Allocation
	if a == nil {
		return newProcessor(cfg.Verifier, cfg.Orders, cfg.JetStream, nil, nil, cfg.Logger), nil
	}
	if _, err := cfg.JetStream.Stream(ctx, allocation.IntentStream); err != nil {
		return nil, fmt.Errorf("allocation intent stream %s: %w (has a worker with -rules run yet?)", allocation.IntentStream, err)
	}
	client, err := cobo.NewClient(a.Cobo)
	if err != nil {
		return nil, err
	}
	return newProcessor(cfg.Verifier, cfg.Orders, cfg.JetStream, a.Rules, client, cfg.Logger), nil
}

// newProcessor wires the handler exactly as Start does: with rules, the
// planner, the order fetcher and the outbox; without, state only.
func newProcessor(verifier *cobo.Verifier, orders *events.OrderStore, js jetstream.JetStream, rules *allocation.Rules, orderAPI allocation.OrderGetter, log zerolog.Logger) *Processor {
	p := &Processor{verifier: verifier, log: log}
	var opts []handlers.Option
	if rules != nil {
		opts = append(opts, handlers.WithPlanner(rules), handlers.WithFetcher(allocation.CoboOrders{API: orderAPI}))
		p.outbox = allocation.NewOutbox(js)
	}
	p.handler = handlers.New(orders, opts...)
	return p
}

// Process applies ev and returns the committed outcome. An error wrapping
// domain.ErrInvalid means the event can never be applied (among them
// domain.ErrUntrusted: its stored signature does not verify, and
// domain.ErrUnknownOrder: Cobo does not know its order); any other error
// is transient, and processing the event again is safe. The caller may
// acknowledge the event only after a nil error: the planned items are
// published by then.
func (p *Processor) Process(ctx context.Context, ev events.Event) (handlers.Outcome, error) {
	m := p.metrics
	if p.verifier == nil {
		return handlers.Outcome{}, fmt.Errorf("event %s: this processor only reconciles: it has no keys to verify events with", ev.EventID)
	}
	// Being on the stream proves nothing: anyone who could publish there
	// (a leaked credential, an operator's redrive) could have put it there.
	// Only Cobo's signature over the stored bytes lets it change state.
	if err := p.verifier.Verify(ev.Body, ev.Timestamp, ev.Signature); err != nil {
		if m != nil {
			m.handled.WithLabelValues(typeLabel(ev.Type), "untrusted").Inc()
		}
		return handlers.Outcome{}, fmt.Errorf("event %s: %w: %v", ev.EventID, domain.ErrUntrusted, err)
	}
	out, err := p.handler.Handle(ctx, ev.Delivery)
	if err != nil {
		if m != nil {
			m.handled.WithLabelValues(typeLabel(ev.Type), "error").Inc()
		}
		return out, err
	}
	log := p.log.With().Str("event_id", ev.EventID).Str("order_id", ev.OrderID).Logger()
	if p.alloc != nil {
		for _, it := range out.Planned {
			p.alloc.ItemPlanned(it)
		}
	}
	// Publish before the ack: if this process dies first, the event is
	// redelivered and the still-planned items are published then.
	if p.outbox != nil && out.Order != nil {
		if _, err := p.outbox.Publish(ctx, out.Order); err != nil {
			return out, err
		}
	}
	if m != nil {
		m.handled.WithLabelValues(typeLabel(ev.Type), string(out.Result)).Inc()
	}
	p.report(log, out)
	if p.observer != nil {
		return out, p.observer(ctx, ev, out)
	}
	return out, nil
}

// report counts and logs what a committed outcome did, whether an event
// or reconciliation caused it.
func (p *Processor) report(log zerolog.Logger, out handlers.Outcome) {
	m := p.metrics
	if m != nil && out.StatusTo != "" {
		m.transitions.WithLabelValues(string(out.StatusTo)).Inc()
	}
	if out.FirstCompleted {
		if m != nil {
			m.completed.Inc()
		}
		log.Info().Msg("order completed")
	}
	if n := len(out.LateRecorded); n > 0 {
		if m != nil {
			m.lateRecorded.Add(float64(n))
		}
		for _, lp := range out.LateRecorded {
			log.Info().Str("transaction_id", lp.TransactionID).Str("amount", lp.Amount.String()).Str("token_id", lp.TokenID).Msg("late payment recorded")
		}
	}
	if out.ConflictingFinal != "" {
		if m != nil {
			m.conflictFinals.Inc()
		}
		log.Warn().Str("stored", string(out.Order.Status)).Str("reported", string(out.ConflictingFinal)).Msg("conflicting final status ignored")
	}
	for _, u := range out.Unclassified {
		if m != nil {
			m.unclassified.WithLabelValues(u.Reason).Inc()
		}
		// Error level: money may be owed, and only an operator can say.
		log.Error().Str("transaction_id", u.TransactionID).Str("tx_hash", u.TxHash).Str("amount", u.Amount.Decimal.String()).
			Str("token_id", u.TokenID).Str("reason", u.Reason).
			Msg("transaction not credited: paystream cannot tell whether it is a late payment owed to the merchant; an operator decides (README, Reconciliation)")
	}
}
