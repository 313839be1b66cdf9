// Package domain holds paystream's domain types: pay-in orders, their
// statuses and late payments. It has no dependencies on transport or storage.
package domain

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// Sentinel errors shared across adapters. Adapters wrap them with context;
// callers match them with errors.Is.
var (
	// ErrNotFound means the requested entity does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means a concurrent writer changed the entity first.
	ErrConflict = errors.New("conflict")
)

// OrderStatus is a Cobo pay-in order status.
type OrderStatus string

// Cobo's pay-in order statuses.
const (
	StatusPending    OrderStatus = "Pending"
	StatusProcessing OrderStatus = "Processing"
	StatusCompleted  OrderStatus = "Completed"
	StatusExpired    OrderStatus = "Expired"
	StatusUnderpaid  OrderStatus = "Underpaid"
)

// Rank orders statuses by progress: Pending < Processing < final. Unknown
// statuses rank below Pending so they never overwrite known state.
func (s OrderStatus) Rank() int {
	switch s {
	case StatusPending:
		return 1
	case StatusProcessing:
		return 2
	case StatusCompleted, StatusExpired, StatusUnderpaid:
		return 3
	default:
		return 0
	}
}

// Final reports whether s is terminal (Completed, Expired or Underpaid).
func (s OrderStatus) Final() bool { return s.Rank() == 3 }

// Known reports whether s is one of Cobo's documented statuses.
func (s OrderStatus) Known() bool { return s.Rank() > 0 }

// Snapshot is an order's fields as one provider event reported them.
// Optional amounts are NullDecimal so that "absent" differs from zero; the
// allocation formula falls back through them.
type Snapshot struct {
	Status              OrderStatus         `json:"status"`
	MerchantID          string              `json:"merchant_id,omitempty"`
	PSPOrderCode        string              `json:"psp_order_code,omitempty"`
	MerchantOrderCode   string              `json:"merchant_order_code,omitempty"`
	PricingCurrency     string              `json:"pricing_currency,omitempty"`
	PricingAmount       decimal.NullDecimal `json:"pricing_amount"`
	FeeAmount           decimal.NullDecimal `json:"fee_amount"`
	PayableCurrency     string              `json:"payable_currency,omitempty"`
	PayableAmount       decimal.NullDecimal `json:"payable_amount"`
	ReceivedTokenAmount decimal.NullDecimal `json:"received_token_amount"`
	OrderAmount         decimal.NullDecimal `json:"order_amount"`
	TokenID             string              `json:"token_id,omitempty"`
	ChainID             string              `json:"chain_id,omitempty"`
	// UpdatedTimestamp is the provider's updated_timestamp, in seconds.
	UpdatedTimestamp int64 `json:"updated_timestamp"`
	// CreatedTimestamp is the provider's created_timestamp of the order
	// (seconds, as Cobo documents it); 0 when not given.
	CreatedTimestamp int64 `json:"created_timestamp,omitempty"`
}

// LatePayment is a deposit that arrived after the order reached a final
// status. It is recorded once per transaction, identified by TransactionID
// or by TxHash (see SameTransaction), and never changes the status.
type LatePayment struct {
	TransactionID string          `json:"transaction_id"`
	Amount        decimal.Decimal `json:"amount"`
	TokenID       string          `json:"token_id"`
	// TxHash is the on-chain transaction hash when the recording source
	// gave one. Cobo's order API names a transaction by its tx_id, which
	// may not be the webhooks' transaction_id, so the hash is what tells
	// that a reconciled transaction and a webhook's are the same one.
	TxHash string `json:"tx_hash,omitempty"`
	// Precise is true when Amount came from a payment.transaction.late event
	// or Cobo's order API (full precision) rather than a
	// payment.order.updated notice, whose amounts Cobo truncates to two
	// decimals.
	Precise bool `json:"precise"`
	// EventID is the event that first recorded this late payment, or
	// ReconcileSource when reconciliation with Cobo's order API did.
	EventID string `json:"event_id"`
	// Reconciled is true when reconciliation with Cobo's order API recorded
	// it (TransactionID is then Cobo's tx_id).
	Reconciled bool `json:"reconciled,omitempty"`
	// CreatedTimestamp is the provider's created_timestamp of the
	// transaction (seconds or milliseconds, as Cobo sent it); 0 when not
	// given. It says whether the payment came after the order's Horizon.
	CreatedTimestamp int64 `json:"created_timestamp,omitempty"`
}

// Deposit is a completed deposit towards an order, recorded once per
// transaction (TransactionID or TxHash).
type Deposit struct {
	TransactionID string          `json:"transaction_id"`
	Amount        decimal.Decimal `json:"amount"`
	TokenID       string          `json:"token_id"`
	// TxHash is the on-chain hash, when the source gave one.
	TxHash string `json:"tx_hash,omitempty"`
	// Reconciled is true when reconciliation with Cobo's order API
	// recorded it.
	Reconciled bool `json:"reconciled,omitempty"`
}

// ReconcileSource stands for the event id of what reconciliation with
// Cobo's order API records (CompletedByEvent, LatePayment.EventID): it is
// the same in every worker, so concurrent reconciliations write the same.
const ReconcileSource = "reconcile"

// SameTransaction reports whether two references name one transaction:
// the same non-empty id, or the same non-empty on-chain hash.
func SameTransaction(id1, hash1, id2, hash2 string) bool {
	return id1 != "" && id1 == id2 || hash1 != "" && hash1 == hash2
}

// Reasons a transaction is recorded as unclassified.
const (
	// UnclassifiedLatenessUnknown: Cobo lists a completed transaction
	// paystream lacks on a final order without saying whether it is late.
	UnclassifiedLatenessUnknown = "lateness_unknown"
	// UnclassifiedAmbiguous: a late payment that may or may not be one
	// already recorded under another id (one of them has no hash).
	UnclassifiedAmbiguous = "ambiguous"
	// UnclassifiedNoAmount: a late transaction without a positive amount.
	UnclassifiedNoAmount = "no_amount"
	// UnclassifiedBeforeHorizon: a late payment made before the order's
	// Horizon (or at a time Cobo did not give): it may have been credited
	// under state of the order that has expired since.
	UnclassifiedBeforeHorizon = "before_horizon"
)

// UnclassifiedTx is a transaction paystream could not classify and so did
// not credit: an operator decides (README, "Reconciliation"). It is
// recorded once per transaction (id or hash).
type UnclassifiedTx struct {
	TransactionID string              `json:"transaction_id"`
	TxHash        string              `json:"tx_hash,omitempty"`
	Amount        decimal.NullDecimal `json:"amount"`
	TokenID       string              `json:"token_id,omitempty"`
	Reason        string              `json:"reason"`
	// EventID is what reported it (ReconcileSource or a webhook event).
	EventID string `json:"event_id"`
}

// Order is paystream's durable view of a pay-in order, merged from every
// event seen for it. It is the value stored per order and returned by the
// admin API.
type Order struct {
	OrderID string `json:"order_id"`
	// Status is the merged status; a final status never changes.
	Status OrderStatus `json:"status"`

	// Snapshot is the best full-precision order snapshot (from
	// payment.order.status.updated or the Cobo order API).
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	// Notice is the best snapshot from payment.order.updated, whose amounts
	// are truncated; it only fills fields the full snapshot lacks.
	Notice *Snapshot `json:"notice,omitempty"`

	LatePayments []LatePayment `json:"late_payments"`
	Deposits     []Deposit     `json:"deposits"`
	// Unclassified are transactions nothing credited because their kind
	// is unknown; an operator decides.
	Unclassified []UnclassifiedTx `json:"unclassified_transactions,omitempty"`

	// CompletedByEvent is the event whose handling first moved the order to
	// Completed. It is set exactly once.
	CompletedByEvent string `json:"completed_by_event,omitempty"`
	// ConflictingFinals lists final statuses reported after the order was
	// already final with a different status (never expected from Cobo).
	ConflictingFinals []OrderStatus `json:"conflicting_finals,omitempty"`

	// Allocations are the fund movements decided for this order, with
	// their progress at the provider.
	Allocations []AllocationItem `json:"allocations,omitempty"`
	// SplitsPlanned is set in the commit that planned the completion
	// splits, so they are planned exactly once.
	SplitsPlanned bool `json:"splits_planned,omitempty"`
	// SplitsSkipped says why the commit that set SplitsPlanned planned no
	// splits: the order is older than its Horizon.
	SplitsSkipped string `json:"splits_skipped,omitempty"`

	// Horizon is set when this state was created at a time the order's
	// earlier state may have expired (the workers' -retention): anything
	// Cobo did before it may have been allocated under that state, which
	// is gone. So nothing from before it is allocated again: no completion
	// splits for an order Cobo created before it, no credit for a late
	// payment made before it (recorded UnclassifiedBeforeHorizon). Unset
	// while no state can have expired yet.
	Horizon *time.Time `json:"horizon,omitempty"`
}

// Settled reports whether nothing further is expected of the order: its
// status is final, or a late payment shows that Cobo has it final, and
// none of its allocation items is still planned or pending. A settled
// order's state may expire after the workers' -retention (see Horizon).
func (o *Order) Settled() bool {
	if !o.Status.Final() && len(o.LatePayments) == 0 {
		return false
	}
	for _, it := range o.Allocations {
		if !it.Final() {
			return false
		}
	}
	return true
}

// Clone returns a deep copy of o: changing either one, its slices or what
// its pointers point to, leaves the other as it was. Decimals are shared,
// as they are immutable. Stores use it to hand out what they remember
// without handing out what they keep.
func (o *Order) Clone() *Order {
	c := *o
	c.Snapshot = clonePtr(o.Snapshot)
	c.Notice = clonePtr(o.Notice)
	c.LatePayments = slices.Clone(o.LatePayments)
	c.Deposits = slices.Clone(o.Deposits)
	c.Unclassified = slices.Clone(o.Unclassified)
	c.ConflictingFinals = slices.Clone(o.ConflictingFinals)
	c.Allocations = slices.Clone(o.Allocations)
	for i := range c.Allocations {
		c.Allocations[i].StuckSince = clonePtr(c.Allocations[i].StuckSince)
	}
	c.Horizon = clonePtr(o.Horizon)
	return &c
}

// clonePtr returns a pointer to a copy of *p, or nil for nil.
func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// AbsentError is an order store's answer for an order it holds no state
// of. It wraps ErrNotFound. Horizon, when set, is the Horizon new state
// of the order gets: the store may have held state for it that expired.
type AbsentError struct {
	OrderID string
	Horizon time.Time
}

// Error implements error.
func (e *AbsentError) Error() string {
	if e.Horizon.IsZero() {
		return fmt.Sprintf("order %s: %v", e.OrderID, ErrNotFound)
	}
	return fmt.Sprintf("order %s: %v (state from before %s may have expired)", e.OrderID, ErrNotFound, e.Horizon.UTC().Format(time.RFC3339))
}

// Unwrap returns ErrNotFound.
func (e *AbsentError) Unwrap() error { return ErrNotFound }

// HorizonOf returns the Horizon an order store gave with err (an
// AbsentError), or the zero time.
func HorizonOf(err error) time.Time {
	var a *AbsentError
	if errors.As(err, &a) {
		return a.Horizon
	}
	return time.Time{}
}

// PreciseCompleted reports whether the order has a full-precision
// snapshot in Completed, which completion splits are computed from.
func (o *Order) PreciseCompleted() bool {
	return o.Snapshot != nil && o.Snapshot.Status == StatusCompleted
}

// Allocation returns a pointer to the item with id, or nil.
func (o *Order) Allocation(id string) *AllocationItem {
	for i := range o.Allocations {
		if o.Allocations[i].ID == id {
			return &o.Allocations[i]
		}
	}
	return nil
}

// OrderView is the public JSON shape of an order: the merged fields flat at
// the top level, as a PSP's engineers expect to read them.
type OrderView struct {
	OrderID             string              `json:"order_id"`
	MerchantID          string              `json:"merchant_id"`
	Status              OrderStatus         `json:"status"`
	PSPOrderCode        string              `json:"psp_order_code,omitempty"`
	PricingCurrency     string              `json:"pricing_currency,omitempty"`
	PayableCurrency     string              `json:"payable_currency"`
	PayableAmount       decimal.NullDecimal `json:"payable_amount"`
	ReceivedTokenAmount decimal.NullDecimal `json:"received_token_amount"`
	PricingAmount       decimal.NullDecimal `json:"pricing_amount"`
	FeeAmount           decimal.NullDecimal `json:"fee_amount"`
	OrderAmount         decimal.NullDecimal `json:"order_amount"`
	TokenID             string              `json:"token_id,omitempty"`
	UpdatedTimestamp    int64               `json:"updated_timestamp"`
	LatePayments        []LatePayment       `json:"late_payments"`
	Deposits            []Deposit           `json:"deposits"`
	Unclassified        []UnclassifiedTx    `json:"unclassified_transactions,omitempty"`
	ConflictingFinals   []OrderStatus       `json:"conflicting_finals,omitempty"`
	Allocations         []AllocationItem    `json:"allocations"`
	// SplitsSkipped and Horizon are the order's (see Order).
	SplitsSkipped string     `json:"splits_skipped,omitempty"`
	Horizon       *time.Time `json:"horizon,omitempty"`
}

// View flattens the order: full-precision fields win, notice fields fill gaps.
func (o *Order) View() OrderView {
	v := OrderView{
		OrderID:           o.OrderID,
		Status:            o.Status,
		LatePayments:      o.LatePayments,
		Deposits:          o.Deposits,
		Unclassified:      o.Unclassified,
		ConflictingFinals: o.ConflictingFinals,
		Allocations:       o.Allocations,
		SplitsSkipped:     o.SplitsSkipped,
		Horizon:           o.Horizon,
	}
	if v.Allocations == nil {
		v.Allocations = []AllocationItem{}
	}
	if v.LatePayments == nil {
		v.LatePayments = []LatePayment{}
	}
	if v.Deposits == nil {
		v.Deposits = []Deposit{}
	}
	// Apply the truncated notice first so the precise snapshot overrides it.
	for _, s := range []*Snapshot{o.Notice, o.Snapshot} {
		if s == nil {
			continue
		}
		setStr(&v.MerchantID, s.MerchantID)
		setStr(&v.PSPOrderCode, s.PSPOrderCode)
		setStr(&v.PricingCurrency, s.PricingCurrency)
		setStr(&v.PayableCurrency, s.PayableCurrency)
		setStr(&v.TokenID, s.TokenID)
		setDec(&v.PayableAmount, s.PayableAmount)
		setDec(&v.ReceivedTokenAmount, s.ReceivedTokenAmount)
		setDec(&v.PricingAmount, s.PricingAmount)
		setDec(&v.FeeAmount, s.FeeAmount)
		setDec(&v.OrderAmount, s.OrderAmount)
		if s.UpdatedTimestamp > v.UpdatedTimestamp {
			v.UpdatedTimestamp = s.UpdatedTimestamp
		}
	}
	return v
}

func setStr(dst *string, s string) {
	if s != "" {
		*dst = s
	}
}

func setDec(dst *decimal.NullDecimal, d decimal.NullDecimal) {
	if d.Valid {
		*dst = d
	}
}

// ErrInvalid means an input can never be processed as it is (a payload that
// does not decode, or lacks what the rules need). Retrying cannot help.
var ErrInvalid = errors.New("invalid input")

// Refusals of an event that changes nothing, each with its own dead-letter
// reason. ErrUntrusted and ErrUnknownOrder are permanent, so they also
// match ErrInvalid; ErrUnconfirmed is transient and is retried.
var (
	// ErrUntrusted means an event's stored signature does not verify
	// against the trusted Cobo keys: it did not come from Cobo, whatever
	// its body says.
	ErrUntrusted error = &refusal{"untrusted", ErrInvalid}
	// ErrUnknownOrder means Cobo's order API does not know the event's
	// order (404): it is another Cobo customer's, not ours.
	ErrUnknownOrder error = &refusal{"unknown order", ErrInvalid}
	// ErrUnconfirmed means Cobo's order API did not (yet) confirm what an
	// event says, or could not be asked; money waits until it does.
	ErrUnconfirmed error = &refusal{"unconfirmed", nil}
)

type refusal struct {
	msg    string
	parent error
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.parent }
