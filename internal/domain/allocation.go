package domain

import (
	"time"

	"github.com/shopspring/decimal"
)

// Allocation backends.
const (
	BackendCobo  = "cobo"
	BackendBitGo = "bitgo"
)

// Allocation item kinds.
const (
	KindSplit = "split"
	KindLate  = "late"
)

// Allocation item statuses, as paystream tracks them on the order.
const (
	// AllocPlanned: decided and durable on the order; not yet known to be
	// at the provider.
	AllocPlanned = "planned"
	// AllocPending: the provider has it and has not finished it.
	AllocPending = "pending"
	// AllocCompleted: done at the provider (Cobo Completed, BitGo cleared).
	AllocCompleted = "completed"
	// AllocFailed: the provider certainly did not make it (Cobo Failed,
	// BitGo released, refused as invalid by the provider with no batch
	// behind it, or never sent because invalid). An operator decides; it is
	// never re-sent.
	AllocFailed = "failed"
)

// AllocationItem is one fund movement paystream decided to make. It is
// written on the order in the same compare-and-set as the change that
// caused it, so it exists exactly once whatever crashes follow.
type AllocationItem struct {
	// ID is deterministic (order, rule or transaction), so it doubles as
	// the idempotency key towards providers.
	ID          string          `json:"id"`
	Kind        string          `json:"kind"`
	OrderID     string          `json:"order_id"`
	Backend     string          `json:"backend"`
	TokenID     string          `json:"token_id"`
	Amount      decimal.Decimal `json:"amount"`
	Source      string          `json:"source_account"`
	Destination string          `json:"destination_account"`
	Description string          `json:"description"`
	Status      string          `json:"status"`
	// RequestID is the Cobo batch request_id (or BitGo clientExternalId)
	// the item was sent under.
	RequestID string `json:"request_id,omitempty"`
	// ProviderID is Cobo's batch_allocation_id or BitGo's allocation id.
	ProviderID string `json:"provider_id,omitempty"`
	// ProviderStatus is the provider's own status word.
	ProviderStatus string `json:"provider_status,omitempty"`
	// Reason explains a failure.
	Reason string `json:"reason,omitempty"`
	// StuckSince is set while the item is still planned or pending longer
	// than the worker's -alloc-stuck-after after it entered a batch: the
	// time it became stuck. It is cleared when the item turns final. An
	// operator reconciles such an item with the provider (see README).
	StuckSince *time.Time `json:"stuck_since,omitempty"`
}

// Final reports whether the item's status can no longer change.
func (a AllocationItem) Final() bool {
	return a.Status == AllocCompleted || a.Status == AllocFailed
}
