// Package handlers holds paystream's business rules: how each Cobo event
// changes an order's state. It knows nothing of HTTP, NATS or acks; state
// is read and written through the OrderRepo it is given.
package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// OrderRepo reads and writes order state with compare-and-set.
type OrderRepo interface {
	// Get returns the order and its revision, or an error wrapping
	// domain.ErrNotFound.
	Get(ctx context.Context, orderID string) (*domain.Order, uint64, error)
	// Put stores o if the stored revision is still rev (0: o is new), or
	// returns an error wrapping domain.ErrConflict.
	Put(ctx context.Context, o *domain.Order, rev uint64) (uint64, error)
}

// CachedOrderRepo is an OrderRepo that also remembers the orders this
// process last read or wrote, so that a change can be tried with
// compare-and-set without reading first.
type CachedOrderRepo interface {
	OrderRepo
	// Cached answers as Get would, without a round trip, from what this
	// process last read or wrote: the order and that revision, or, for an
	// order it does not remember, an error wrapping domain.ErrNotFound
	// (with the horizon Get would give, see domain.HorizonOf). The answer
	// may be stale. Any other error means it has nothing to answer with:
	// the caller reads with Get.
	Cached(orderID string) (*domain.Order, uint64, error)
	// Create stores o as a new order, in one round trip, when its key has
	// no entry at all; otherwise (the order exists, or existed and was
	// removed, or a lost race) it returns an error wrapping
	// domain.ErrConflict, and the caller reads with Get and writes with
	// Put.
	Create(ctx context.Context, o *domain.Order) (uint64, error)
}

// Planner decides the allocation items an order's changes make. Its items
// are committed with the change itself.
type Planner interface {
	// OnCompleted returns the items for the order's first Completed.
	OnCompleted(o *domain.Order) []domain.AllocationItem
	// OnLatePayment returns the items for a newly recorded late payment.
	OnLatePayment(o *domain.Order, lp domain.LatePayment) []domain.AllocationItem
	// NeedsMerchantForLate reports whether late payments need the order's
	// merchant, so that an order never seen must be fetched first.
	NeedsMerchantForLate() bool
}

// OrderFetcher reads an order from the provider's API with paystream's own
// credentials. With a planner, no allocation is planned from a webhook
// alone: the provider confirms the order first.
type OrderFetcher interface {
	// FetchOrder returns the order, or an error wrapping domain.ErrNotFound
	// when the provider does not know it (it is not ours).
	FetchOrder(ctx context.Context, orderID string) (*ProviderOrder, error)
}

// ProviderOrder is an order as the provider's API reports it.
type ProviderOrder struct {
	// Snapshot is the full-precision order.
	Snapshot *domain.Snapshot
	// Transactions are those the provider lists for the order; the list
	// may be absent.
	Transactions []ProviderTx
}

// ProviderTx is a transaction of a ProviderOrder.
type ProviderTx struct {
	// ID and Hash identify it; either may be empty.
	ID, Hash string
	Amount   decimal.NullDecimal
}

// find returns the listed transaction with id, or else with the on-chain
// hash: whether Cobo's tx_id is the webhook's transaction_id is not
// documented, so either identifies it.
func (p *ProviderOrder) find(id, hash string) (ProviderTx, bool) {
	for _, tx := range p.Transactions {
		if tx.ID != "" && tx.ID == id || tx.Hash != "" && tx.Hash == hash {
			return tx, true
		}
	}
	return ProviderTx{}, false
}

// Option configures a Handler.
type Option func(*Handler)

// WithPlanner makes the handler plan allocations with p.
func WithPlanner(p Planner) Option { return func(h *Handler) { h.planner = p } }

// WithFetcher lets the handler fetch unknown orders through f.
func WithFetcher(f OrderFetcher) Option { return func(h *Handler) { h.fetcher = f } }

// Result says what handling an event did.
type Result string

// Results of Handle.
const (
	// Applied: the event changed the order's state.
	Applied Result = "applied"
	// Unchanged: the state already reflected the event (duplicate or stale).
	Unchanged Result = "unchanged"
	// Ignored: paystream does not act on this event type.
	Ignored Result = "ignored"
	// NoOrder: the event is about no pay-in order (e.g. top-up mode).
	NoOrder Result = "no_order"
)

// Outcome is the committed effect of one event.
type Outcome struct {
	Result Result
	// Order is the state after the event, when the event concerns an order.
	Order *domain.Order
	// FirstCompleted is true for exactly one event per order: the one whose
	// commit first moved the order to Completed.
	FirstCompleted bool
	// LateRecorded lists late payments first recorded at full precision by
	// this event; each transaction id appears in exactly one Outcome.
	LateRecorded []domain.LatePayment
	// ConflictingFinal is a final status that contradicted the stored final
	// status, which was kept.
	ConflictingFinal domain.OrderStatus
	// Planned lists allocation items this event's commit added.
	Planned []domain.AllocationItem
	// StatusTo is the status the commit moved the order to, or "".
	StatusTo domain.OrderStatus
	// Unclassified lists transactions this commit recorded as
	// unclassified: not credited, for an operator to decide. Each appears
	// in exactly one Outcome.
	Unclassified []domain.UnclassifiedTx
}

// DefaultMaxCASAttempts bounds compare-and-set retries for one event.
const DefaultMaxCASAttempts = 50

// Handler applies Cobo events to order state. It is safe for concurrent use
// by any number of goroutines and processes.
type Handler struct {
	repo OrderRepo
	// cached is repo when it remembers orders (CachedOrderRepo).
	cached      CachedOrderRepo
	planner     Planner
	fetcher     OrderFetcher
	maxAttempts int
	// locks take turns between this Handler's updates of one order.
	locks *orderLocks
}

// orderLocks take turns between the goroutines of one process that update
// the same order, so that the second starts from the state the first
// committed (a CachedOrderRepo remembers it) instead of losing its
// compare-and-set to it: events of one order often arrive together. Orders
// are spread over a fixed number of locks by a hash, so two orders
// sharing one only wait for each other now and then. Nothing depends on
// it for correctness: other processes race as before, and the
// compare-and-set decides.
type orderLocks struct {
	seed maphash.Seed
	mu   [1024]sync.Mutex
}

func (l *orderLocks) lock(orderID string) *sync.Mutex {
	m := &l.mu[maphash.String(l.seed, orderID)%uint64(len(l.mu))]
	m.Lock()
	return m
}

// New returns a Handler over repo.
func New(repo OrderRepo, opts ...Option) *Handler {
	h := &Handler{repo: repo, maxAttempts: DefaultMaxCASAttempts, locks: &orderLocks{seed: maphash.MakeSeed()}}
	h.cached, _ = repo.(CachedOrderRepo)
	for _, o := range opts {
		o(h)
	}
	return h
}

// Handle applies one delivered event. Applying the same event again, or
// events in any order, gives the same state. An error wrapping
// domain.ErrInvalid means the event can never be applied; other errors are
// transient.
func (h *Handler) Handle(ctx context.Context, d cobo.Delivery) (Outcome, error) {
	switch d.Type {
	case cobo.EventOrderStatusUpdated, cobo.EventLegacyStatusUpdated:
		var data cobo.OrderData
		if err := decode(d, &data); err != nil {
			return Outcome{}, err
		}
		if data.OrderID == "" {
			return Outcome{}, fmt.Errorf("event %s: %w: data.order_id is empty", d.EventID, domain.ErrInvalid)
		}
		if err := knownStatus(d.EventID, data.Status); err != nil {
			return Outcome{}, err
		}
		snap := SnapshotFromOrder(data)
		var confirmed *domain.Snapshot
		if snap.Status == domain.StatusCompleted {
			var err error
			if confirmed, err = h.confirmCompleted(ctx, d.EventID, data.OrderID); err != nil {
				return Outcome{}, err
			}
		}
		return h.update(ctx, data.OrderID, func(o *domain.Order, fx *effects) {
			mergeSnapshot(&o.Snapshot, snap, fx)
			mergeStatus(o, snap.Status, d.EventID, fx)
			confirm(o, confirmed, d.EventID, fx)
		})

	case cobo.EventOrderUpdated:
		var data cobo.OrderUpdateData
		if err := decode(d, &data); err != nil {
			return Outcome{}, err
		}
		if data.OrderID == "" {
			return Outcome{}, fmt.Errorf("event %s: %w: data.order_id is empty", d.EventID, domain.ErrInvalid)
		}
		if err := knownStatus(d.EventID, data.Status); err != nil {
			return Outcome{}, err
		}
		snap := snapshotFromUpdate(data)
		late, err := lateFromUpdate(d.EventID, data)
		if err != nil {
			return Outcome{}, err
		}
		// A Completed notice carries truncated amounts and no price or fee;
		// the confirmation brings the full order the splits need.
		var confirmed *domain.Snapshot
		if snap.Status == domain.StatusCompleted {
			if confirmed, err = h.confirmCompleted(ctx, d.EventID, data.OrderID); err != nil {
				return Outcome{}, err
			}
		}
		return h.update(ctx, data.OrderID, func(o *domain.Order, fx *effects) {
			mergeSnapshot(&o.Notice, snap, fx)
			mergeStatus(o, snap.Status, d.EventID, fx)
			confirm(o, confirmed, d.EventID, fx)
			for _, lp := range late {
				recordLate(o, lp, fx)
			}
		})

	case cobo.EventTransactionLate:
		var data cobo.TransactionData
		if err := decode(d, &data); err != nil {
			return Outcome{}, err
		}
		amount := data.DestinationAmount()
		switch {
		case data.OrderID == "":
			return Outcome{}, fmt.Errorf("event %s: %w: late payment %s names no order_id", d.EventID, domain.ErrInvalid, data.TransactionID)
		case data.TransactionID == "":
			return Outcome{}, fmt.Errorf("event %s: %w: data.transaction_id is empty", d.EventID, domain.ErrInvalid)
		case !amount.Valid || !amount.Decimal.IsPositive():
			return Outcome{}, fmt.Errorf("event %s: %w: destination.amount is missing or not positive", d.EventID, domain.ErrInvalid)
		}
		lp := domain.LatePayment{TransactionID: data.TransactionID, Amount: amount.Decimal, TokenID: data.TokenID, TxHash: data.TxHash, Precise: true, EventID: d.EventID,
			CreatedTimestamp: int64(data.CreatedTimestamp)}
		var confirmed *domain.Snapshot
		if h.planner != nil && h.planner.NeedsMerchantForLate() {
			var err error
			if confirmed, err = h.confirmLate(ctx, d.EventID, data.OrderID, lp, data.TxHash); err != nil {
				return Outcome{}, err
			}
		}
		return h.update(ctx, data.OrderID, func(o *domain.Order, fx *effects) {
			confirm(o, confirmed, d.EventID, fx)
			recordLate(o, lp, fx)
		})

	case cobo.EventTransactionCompleted:
		var data cobo.TransactionData
		if err := decode(d, &data); err != nil {
			return Outcome{}, err
		}
		if data.OrderID == "" {
			return Outcome{Result: NoOrder}, nil
		}
		amount := data.DestinationAmount()
		switch {
		case data.TransactionID == "":
			return Outcome{}, fmt.Errorf("event %s: %w: data.transaction_id is empty", d.EventID, domain.ErrInvalid)
		case !amount.Valid || !amount.Decimal.IsPositive():
			return Outcome{}, fmt.Errorf("event %s: %w: data.destination.amount is missing or not positive", d.EventID, domain.ErrInvalid)
		}
		dep := domain.Deposit{TransactionID: data.TransactionID, Amount: amount.Decimal, TokenID: data.TokenID, TxHash: data.TxHash}
		return h.update(ctx, data.OrderID, func(o *domain.Order, fx *effects) {
			recordDeposit(o, dep, fx)
			// Cobo no longer sends Processing events; a credited deposit
			// is the evidence that an order is being paid.
			mergeStatus(o, domain.StatusProcessing, d.EventID, fx)
		})
	}
	return Outcome{Result: Ignored}, nil
}

// update runs mutate on the current state and commits it with
// compare-and-set, retrying on conflicts. Effects are those of the attempt
// that committed.
//
// With a CachedOrderRepo the first attempt starts from the state this
// process remembers, without reading: a new order is created, a known one
// written at the remembered revision. Only the compare-and-set decides:
// when the remembered state is stale it fails, and every later attempt
// reads the stored state. An attempt that would write nothing is never
// taken from remembered state: that the event changes nothing must hold
// of the stored state, so it is read.
func (h *Handler) update(ctx context.Context, orderID string, mutate func(*domain.Order, *effects)) (Outcome, error) {
	defer h.locks.lock(orderID).Unlock()
	fromCache := h.cached != nil
	// Attempts count reads: the one try from remembered state is extra.
	for attempt := 0; attempt < h.maxAttempts; {
		var o *domain.Order
		var rev uint64
		var err error
		speculative := false
		if fromCache {
			fromCache = false
			o, rev, err = h.cached.Cached(orderID)
			speculative = err == nil || errors.Is(err, domain.ErrNotFound)
		}
		if !speculative {
			attempt++
			o, rev, err = h.repo.Get(ctx, orderID)
		}
		if errors.Is(err, domain.ErrNotFound) {
			o, rev = &domain.Order{OrderID: orderID}, 0
			// The store says whether earlier state of the order may have
			// expired; the new state keeps that for every later change.
			if hz := domain.HorizonOf(err); !hz.IsZero() {
				o.Horizon = &hz
			}
		} else if err != nil {
			return Outcome{}, fmt.Errorf("load order %s: %w", orderID, err)
		}
		var fx effects
		mutate(o, &fx)
		h.plan(o, &fx)
		if !fx.changed {
			if speculative {
				continue
			}
			return Outcome{Result: Unchanged, Order: o}, nil
		}
		if speculative && rev == 0 {
			_, err = h.cached.Create(ctx, o)
		} else {
			_, err = h.repo.Put(ctx, o, rev)
		}
		if err != nil {
			if errors.Is(err, domain.ErrConflict) {
				continue
			}
			return Outcome{}, fmt.Errorf("save order %s: %w", orderID, err)
		}
		return Outcome{
			Result:           Applied,
			Order:            o,
			FirstCompleted:   fx.firstCompleted,
			LateRecorded:     fx.lateRecorded,
			ConflictingFinal: fx.conflictingFinal,
			Planned:          fx.planned,
			StatusTo:         fx.statusTo,
			Unclassified:     fx.unclassified,
		}, nil
	}
	return Outcome{}, fmt.Errorf("update order %s: %d attempts lost the race: %w", orderID, h.maxAttempts, domain.ErrConflict)
}

// plan adds the allocation items of this change, once per item id:
// completion splits once the order is Completed with a full-precision
// snapshot, and an item per newly recorded late payment.
func (h *Handler) plan(o *domain.Order, fx *effects) {
	if h.planner == nil {
		return
	}
	// Money moves only by what Cobo's API confirmed for this change: the
	// planner sees the order as Cobo answered, never the webhook's copy.
	var items []domain.AllocationItem
	if fx.confirmed == nil {
		return
	}
	byCobo := &domain.Order{OrderID: o.OrderID, Status: o.Status, Snapshot: fx.confirmed}
	if o.Status == domain.StatusCompleted && !o.SplitsPlanned && fx.confirmed.Status == domain.StatusCompleted {
		o.SplitsPlanned = true
		fx.changed = true
		if created := createdAt(o, fx.confirmed); o.Horizon != nil && !created.After(*o.Horizon) {
			// State of this order may have expired, with its splits planned
			// in it: planning them again could pay them twice.
			o.SplitsSkipped = fmt.Sprintf("Cobo created the order at %s, not after its horizon %s: its splits may have been planned in state that has expired",
				timeOrUnknown(created), o.Horizon.UTC().Format(time.RFC3339))
		} else {
			items = append(items, h.planner.OnCompleted(byCobo)...)
		}
	}
	for _, lp := range fx.lateRecorded {
		items = append(items, h.planner.OnLatePayment(byCobo, lp)...)
	}
	for _, it := range items {
		if o.Allocation(it.ID) == nil {
			o.Allocations = append(o.Allocations, it)
			fx.planned = append(fx.planned, it)
			fx.changed = true
		}
	}
	// Sorted so the stored order does not depend on event arrival order.
	slices.SortFunc(o.Allocations, func(a, b domain.AllocationItem) int { return strings.Compare(a.ID, b.ID) })
}

// confirmCompleted asks the provider whether an order an event reports
// Completed is ours and Completed, before its splits are planned. It
// returns the provider's order, or nil when nothing needs confirming (no
// planner, or the splits are planned already). The errors wrap
// domain.ErrUnknownOrder (the provider does not know the order) or
// domain.ErrUnconfirmed (it does not say Completed yet, or could not be
// asked), so the event changes nothing until the provider agrees.
func (h *Handler) confirmCompleted(ctx context.Context, eventID, orderID string) (*domain.Snapshot, error) {
	if h.planner == nil {
		return nil, nil
	}
	o, _, err := h.repo.Get(ctx, orderID)
	switch {
	case err == nil && o.SplitsPlanned:
		return nil, nil
	case err != nil && !errors.Is(err, domain.ErrNotFound):
		return nil, fmt.Errorf("load order %s: %w", orderID, err)
	}
	po, err := h.fetch(ctx, eventID, orderID)
	if err != nil {
		return nil, err
	}
	if po.Snapshot.Status != domain.StatusCompleted {
		return nil, fmt.Errorf("event %s: %w: the event says order %s is Completed, Cobo's API says %q", eventID, domain.ErrUnconfirmed, orderID, po.Snapshot.Status)
	}
	return po.Snapshot, nil
}

// confirmLate asks the provider whether the order of a late payment is
// ours before the payment is credited; when the provider lists the
// transaction (by id or hash), its amount must be the event's.
func (h *Handler) confirmLate(ctx context.Context, eventID, orderID string, lp domain.LatePayment, txHash string) (*domain.Snapshot, error) {
	po, err := h.fetch(ctx, eventID, orderID)
	if err != nil {
		return nil, err
	}
	if tx, listed := po.find(lp.TransactionID, txHash); listed && (!tx.Amount.Valid || !tx.Amount.Decimal.Equal(lp.Amount)) {
		return nil, fmt.Errorf("event %s: %w: late payment %s of order %s is %s in the event but %s in Cobo's order", eventID, domain.ErrInvalid, lp.TransactionID, orderID, lp.Amount, tx.Amount.Decimal)
	}
	return po.Snapshot, nil
}

func (h *Handler) fetch(ctx context.Context, eventID, orderID string) (*ProviderOrder, error) {
	if h.fetcher == nil {
		return nil, fmt.Errorf("event %s: %w: no order API to confirm order %s with", eventID, domain.ErrUnconfirmed, orderID)
	}
	po, err := h.fetcher.FetchOrder(ctx, orderID)
	switch {
	case errors.Is(err, domain.ErrNotFound):
		return nil, fmt.Errorf("event %s: %w: Cobo's order API does not know order %s: %v", eventID, domain.ErrUnknownOrder, orderID, err)
	case err != nil:
		return nil, fmt.Errorf("event %s: %w: ask Cobo for order %s: %v", eventID, domain.ErrUnconfirmed, orderID, err)
	case po == nil || po.Snapshot == nil:
		return nil, fmt.Errorf("event %s: %w: Cobo's answer for order %s has no order", eventID, domain.ErrUnconfirmed, orderID)
	}
	return po, nil
}

// knownStatus refuses an order event whose status is not one of Cobo's:
// such an event would create an order with nothing known about it.
func knownStatus(eventID, status string) error {
	if !domain.OrderStatus(status).Known() {
		return fmt.Errorf("event %s: %w: data.status %q is not a pay-in order status (Pending, Processing, Completed, Expired, Underpaid)", eventID, domain.ErrInvalid, status)
	}
	return nil
}

func decode[T any](d cobo.Delivery, v *T) error {
	// Decoded with the envelope (events.DecodeDelivery): the same bytes
	// through the same decoder.
	if p, ok := d.Decoded.(*T); ok {
		*v = *p
		return nil
	}
	if err := json.Unmarshal(d.Data, v); err != nil {
		return fmt.Errorf("event %s (%s): %w: data does not decode: %v", d.EventID, d.Type, domain.ErrInvalid, err)
	}
	return nil
}

// SnapshotFromOrder maps a full-precision Cobo order (webhook data or
// GET /payments/orders/{id}) to a snapshot.
func SnapshotFromOrder(d cobo.OrderData) *domain.Snapshot {
	return &domain.Snapshot{
		Status:              domain.OrderStatus(d.Status),
		MerchantID:          d.MerchantID,
		PSPOrderCode:        d.PSPOrderCode,
		MerchantOrderCode:   d.MerchantOrderCode,
		PricingCurrency:     firstNonEmpty(d.PricingCurrency, d.Currency),
		PricingAmount:       d.PricingAmount.NullDecimal,
		FeeAmount:           d.FeeAmount.NullDecimal,
		PayableCurrency:     d.PayableCurrency,
		PayableAmount:       d.PayableAmount.NullDecimal,
		ReceivedTokenAmount: d.ReceivedTokenAmount.NullDecimal,
		OrderAmount:         d.OrderAmount.NullDecimal,
		TokenID:             d.TokenID,
		ChainID:             d.ChainID,
		UpdatedTimestamp:    int64(d.UpdatedTimestamp),
		CreatedTimestamp:    int64(d.CreatedTimestamp),
	}
}

func snapshotFromUpdate(d cobo.OrderUpdateData) *domain.Snapshot {
	s := &domain.Snapshot{
		Status:            domain.OrderStatus(d.Status),
		MerchantID:        d.MerchantID,
		PSPOrderCode:      d.PSPOrderCode,
		MerchantOrderCode: d.MerchantOrderCode,
		UpdatedTimestamp:  int64(d.UpdatedTimestamp),
		CreatedTimestamp:  int64(d.CreatedTimestamp),
	}
	if r := d.RequestedAmount; r != nil {
		s.PayableAmount = r.Amount.NullDecimal
		s.PayableCurrency = r.TokenID
		s.ChainID = r.ChainID
	}
	if c := d.CreditedAmount; c != nil {
		s.ReceivedTokenAmount = c.Amount.NullDecimal
	}
	return s
}

func lateFromUpdate(eventID string, d cobo.OrderUpdateData) ([]domain.LatePayment, error) {
	var out []domain.LatePayment
	for _, tx := range d.Transactions {
		if !tx.IsLate {
			continue
		}
		if tx.TransactionID == "" || tx.Amount == nil || !tx.Amount.Amount.Valid {
			return nil, fmt.Errorf("event %s: %w: late transaction without transaction_id or amount", eventID, domain.ErrInvalid)
		}
		out = append(out, domain.LatePayment{
			TransactionID: tx.TransactionID,
			Amount:        tx.Amount.Amount.Decimal,
			TokenID:       tx.Amount.TokenID,
			TxHash:        tx.TxHash,
			EventID:       eventID,
		})
	}
	return out, nil
}

// createdAt is when Cobo created the order: as its order API answered
// (confirmed), else as a signed webhook of the order said; zero when none
// did.
func createdAt(o *domain.Order, confirmed *domain.Snapshot) time.Time {
	for _, s := range []*domain.Snapshot{confirmed, o.Snapshot, o.Notice} {
		if s != nil && s.CreatedTimestamp > 0 {
			return cobo.Int64(s.CreatedTimestamp).Time()
		}
	}
	return time.Time{}
}

// timeOrUnknown formats a provider time for a reason, "an unknown time"
// when the provider gave none.
func timeOrUnknown(t time.Time) string {
	if t.IsZero() {
		return "an unknown time"
	}
	return t.UTC().Format(time.RFC3339)
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
