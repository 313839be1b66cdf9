// Package apply is paystream's per-event core: what happens to one stored
// event, or to one order read from Cobo's API, between reading it and
// acknowledging it. It verifies the stored Cobo signature, applies the
// business rules (internal/handlers) to order state, and publishes the
// allocation items the change planned through the outbox.
//
// Every path that changes order state goes through a Processor: the
// workers' durable consumer (Process), `worker replay -apply` (Apply) and
// reconciliation with Cobo's order list (Reconcile). So re-applying an
// event is exactly what a redelivery is, and a repaired order is planned
// exactly as a webhook would have planned it.
package apply

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

// ErrReconcileOnly is returned by Process and Apply of a Processor built
// with Config.ReconcileOnly: it has no keys to verify events with.
var ErrReconcileOnly = errors.New("this processor only reconciles: it has no keys to verify events with")

// Observer sees every outcome an event committed, after the outbox publish
// and before the event is acknowledged; an error from it fails the event
// as any transient error does.
type Observer func(ctx context.Context, ev events.Event, out handlers.Outcome) error

// Allocation is what the core plans allocation items with. It must be what
// the workers run with: otherwise an event applied by one path could reach
// Completed without the splits the workers would plan.
type Allocation struct {
	// Rules decide the items. Required.
	Rules *allocation.Rules
	// Cobo configures the client that reads an order from Cobo's order API
	// (GET /payments/orders/{order_id}) before anything is planned from a
	// webhook; cobo.NewClient checks it.
	Cobo cobo.ClientConfig
}

// Config configures a Processor.
type Config struct {
	// Verifier holds the trusted Cobo webhook keys: every event's stored
	// signature is checked against them before it may change anything.
	// Required unless ReconcileOnly.
	Verifier *cobo.Verifier
	// ReconcileOnly builds a Processor for reconciliation alone (`worker
	// reconcile` has no trusted keys): its Process and Apply refuse every
	// event with ErrReconcileOnly. Verifier must then be nil.
	ReconcileOnly bool
	// Allocation, when set, plans allocations and publishes their intents.
	// nil keeps order state only, which is right only when the workers run
	// without rules.
	Allocation *Allocation
	// Logger gets a line per completed order, late payment, conflicting
	// final status and unclassified transaction.
	Logger zerolog.Logger
	// Metrics, when set, counts events and what they changed (workers).
	Metrics *Metrics
	// AllocMetrics, when set, counts the items planned (workers).
	AllocMetrics *allocation.Metrics
	// Observer, when set, sees every outcome an event committed (tests).
	Observer Observer
}

// ConfigError is a Config that Validate or New refused (New's error wraps
// it); worker.ConfigError is the same type, for worker.Config. Its message
// names the field at fault; Field is that field or the part it is in (e.g.
// "Verifier", "Allocation.Cobo", "Consumer"), for a command to name the
// flag that set it.
type ConfigError struct {
	Field string
	Err   error
}

// Error returns the cause's message, which names the field.
func (e *ConfigError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *ConfigError) Unwrap() error { return e.Err }

// Validate reports the first invalid field as a *ConfigError. New calls
// it; a process may call it before it connects anywhere, to fail early.
func (c Config) Validate() error {
	switch {
	case c.Verifier == nil && !c.ReconcileOnly:
		return &ConfigError{"Verifier", errors.New("Verifier is required: events are re-verified before they change anything")}
	case c.Verifier != nil && c.ReconcileOnly:
		return &ConfigError{"Verifier", errors.New("Verifier and ReconcileOnly exclude each other")}
	case c.Allocation != nil && c.Allocation.Rules == nil:
		return &ConfigError{"Allocation.Rules", errors.New("Allocation.Rules is required")}
	}
	return nil
}

// Processor applies stored events and Cobo's orders. Processing an event
// whose effect is already committed changes nothing, and an item is never
// planned twice: its id is deterministic, it is written in the same
// compare-and-set as the change that caused it, it is the intent's message
// id, and a claim keeps it in one batch. It is safe for concurrent use.
type Processor struct {
	cfg     Config
	handler *handlers.Handler
	// outbox is nil without Allocation.
	outbox *allocation.Outbox
}

var _ events.Processor = (*Processor)(nil)

// New returns a Processor over the order state in orders. With Allocation,
// js must reach the allocation intent stream, which New does not look for
// (see Open).
func New(js jetstream.JetStream, orders *events.OrderStore, cfg Config) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("apply config: %w", err)
	}
	if orders == nil {
		return nil, errors.New("apply: the order store is required")
	}
	p := &Processor{cfg: cfg}
	var opts []handlers.Option
	if a := cfg.Allocation; a != nil {
		if js == nil {
			return nil, errors.New("apply: JetStream is required with Allocation: the outbox publishes intents")
		}
		client, err := cobo.NewClient(a.Cobo)
		if err != nil {
			return nil, fmt.Errorf("apply config: %w", &ConfigError{"Allocation.Cobo", fmt.Errorf("Allocation.Cobo: %w", err)})
		}
		opts = append(opts, handlers.WithPlanner(a.Rules), handlers.WithFetcher(coboOrders{api: client}))
		p.outbox = allocation.NewOutbox(js)
	}
	p.handler = handlers.New(orders, opts...)
	return p, nil
}

// Open is New for a process that is not a worker (`worker replay -apply`,
// `worker reconcile`). With Allocation, the allocation intent stream must
// exist already (a worker with rules creates it): it is not created here,
// since that would also reconfigure the batchers' shared consumers.
func Open(ctx context.Context, js jetstream.JetStream, orders *events.OrderStore, cfg Config) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("apply config: %w", err)
	}
	if cfg.Allocation != nil {
		if _, err := js.Stream(ctx, allocation.IntentStream); err != nil {
			return nil, fmt.Errorf("allocation intent stream %s: %w (has a worker with -rules run yet?)", allocation.IntentStream, err)
		}
	}
	return New(js, orders, cfg)
}

// Process implements events.Processor: it applies ev (see Apply) and
// drops the outcome.
func (p *Processor) Process(ctx context.Context, ev events.Event) error {
	_, err := p.Apply(ctx, ev)
	return err
}

// Apply applies ev and returns the committed outcome. An error wrapping
// domain.ErrInvalid means the event can never be applied (among them
// domain.ErrUntrusted: its stored signature does not verify, and
// domain.ErrUnknownOrder: Cobo does not know its order); any other error
// is transient, and applying the event again is safe. The caller may
// acknowledge the event only after a nil error: the planned items are
// published by then.
func (p *Processor) Apply(ctx context.Context, ev events.Event) (handlers.Outcome, error) {
	m := p.cfg.Metrics
	if p.cfg.ReconcileOnly {
		return handlers.Outcome{}, fmt.Errorf("event %s: %w", ev.EventID, ErrReconcileOnly)
	}
	// Being on the stream proves nothing: anyone who could publish there
	// (a leaked credential, an operator's redrive) could have put it there.
	// Only Cobo's signature over the stored bytes lets it change state.
	if err := p.cfg.Verifier.Verify(ev.Body, ev.Timestamp, ev.Signature); err != nil {
		m.handled(ev.Type, "untrusted")
		return handlers.Outcome{}, fmt.Errorf("event %s: %w: %v", ev.EventID, domain.ErrUntrusted, err)
	}
	out, err := p.handler.Handle(ctx, ev.Delivery)
	if err != nil {
		m.handled(ev.Type, "error")
		return out, err
	}
	if err := p.publish(ctx, out); err != nil {
		return out, err
	}
	m.handled(ev.Type, string(out.Result))
	p.report(func(c zerolog.Context) zerolog.Context {
		return c.Str("event_id", ev.EventID).Str("order_id", ev.OrderID)
	}, out)
	if p.cfg.Observer != nil {
		return out, p.cfg.Observer(ctx, ev, out)
	}
	return out, nil
}

// Reconcile applies an order this process read from Cobo's order API with
// its own API key (a reconciliation pass) through the path every event
// takes: the handlers' core (handlers.Handler.Reconcile: the same merge,
// compare-and-set and planning as a webhook, the order counting as
// confirmed by Cobo), then the outbox publish of the order's still-planned
// items, so that what it planned is delivered like what an event plans.
// Nothing is read from NATS, so there is no signature to verify: d must
// come from the process's own signed API call, never from a message.
// Errors are as for Apply.
func (p *Processor) Reconcile(ctx context.Context, d cobo.OrderData) (handlers.Outcome, error) {
	out, err := p.handler.Reconcile(ctx, d)
	if err != nil {
		return out, err
	}
	if err := p.publish(ctx, out); err != nil {
		return out, err
	}
	p.report(func(c zerolog.Context) zerolog.Context {
		return c.Str("order_id", d.OrderID).Str("source", "reconcile")
	}, out)
	return out, nil
}

// publish counts the items out planned and publishes the order's
// still-planned items. It runs before the caller acknowledges: if this
// process dies first, the event is redelivered (or the order found missing
// again) and the still-planned items are published then.
func (p *Processor) publish(ctx context.Context, out handlers.Outcome) error {
	if am := p.cfg.AllocMetrics; am != nil {
		for _, it := range out.Planned {
			am.ItemPlanned(it)
		}
	}
	if p.outbox == nil || out.Order == nil {
		return nil
	}
	_, err := p.outbox.Publish(ctx, out.Order)
	return err
}

// report counts and logs what a committed outcome did, whether an event
// or reconciliation caused it; with adds the cause to the log lines.
func (p *Processor) report(with func(zerolog.Context) zerolog.Context, out handlers.Outcome) {
	m := p.cfg.Metrics
	if out.StatusTo != "" {
		m.transition(out.StatusTo)
	}
	// Most outcomes log nothing: the logger with the cause is built only
	// for those that do, off the path every event takes. Completions and
	// late payments are logged at info, which production often turns off.
	var log zerolog.Logger
	infoOn := p.cfg.Logger.GetLevel() <= zerolog.InfoLevel && zerolog.GlobalLevel() <= zerolog.InfoLevel
	if (out.FirstCompleted || len(out.LateRecorded) > 0) && infoOn || out.ConflictingFinal != "" || len(out.Unclassified) > 0 {
		log = with(p.cfg.Logger.With()).Logger()
	}
	if out.FirstCompleted {
		m.orderCompleted()
		log.Info().Msg("order completed")
	}
	for _, lp := range out.LateRecorded {
		m.lateRecorded()
		log.Info().Str("transaction_id", lp.TransactionID).Str("amount", lp.Amount.String()).Str("token_id", lp.TokenID).Msg("late payment recorded")
	}
	if out.ConflictingFinal != "" {
		m.conflictingFinal()
		log.Warn().Str("stored", string(out.Order.Status)).Str("reported", string(out.ConflictingFinal)).Msg("conflicting final status ignored")
	}
	for _, u := range out.Unclassified {
		m.unclassifiedTx(u.Reason)
		// Error level: money may be owed, and only an operator can say.
		log.Error().Str("transaction_id", u.TransactionID).Str("tx_hash", u.TxHash).Str("amount", u.Amount.Decimal.String()).
			Str("token_id", u.TokenID).Str("reason", u.Reason).
			Msg("transaction not credited: paystream cannot tell whether it is a late payment owed to the merchant; an operator decides (README, Reconciliation)")
	}
}
