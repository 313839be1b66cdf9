package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/replay"
)

// OrderDetail is one order as its page shows it.
type OrderDetail struct {
	Order domain.OrderView `json:"order"`
	// CompletedByEvent is the event that first completed the order.
	CompletedByEvent string `json:"completed_by_event,omitempty"`
	// Revision is the bucket revision of the state; ChangedAt when it was
	// stored (from the index, when it has the order).
	Revision  uint64    `json:"revision"`
	ChangedAt time.Time `json:"changed_at,omitzero"`
}

// order reads one order from the bucket (never the index, which only
// lists).
func (c *Console) order(ctx context.Context, orderID string) (OrderDetail, error) {
	store := c.orderStore()
	if store == nil {
		return OrderDetail{}, errNoBucket
	}
	o, rev, err := store.Get(ctx, orderID)
	if errors.Is(err, domain.ErrNotFound) {
		return OrderDetail{}, fmt.Errorf("order %q: %w", orderID, domain.ErrNotFound)
	}
	if err != nil {
		return OrderDetail{}, fmt.Errorf("order store %w: %v", httpapi.ErrUnavailable, err)
	}
	d := OrderDetail{Order: o.View(), CompletedByEvent: o.CompletedByEvent, Revision: rev}
	if s, ok := c.index.Get(orderID); ok && s.Revision == rev {
		d.ChangedAt = s.ChangedAt
	}
	return d, nil
}

// TimelineEvent is one stored event of an order, as `worker replay
// -verify` prints it, with the stored body as it is.
type TimelineEvent struct {
	replay.Line
	Event      rawJSON `json:"event,omitempty"`
	BodyBase64 string  `json:"body_base64,omitempty"`
}

// rawJSON keeps a JSON value's bytes as they are, for decoding and
// encoding alike.
type rawJSON []byte

func (r rawJSON) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

// timeline returns every stored event of the order, oldest first, each
// verified against the trusted keys. It reads only that order's subject
// (replay.Replay with the order selected).
func (c *Console) timeline(ctx context.Context, orderID string) ([]TimelineEvent, error) {
	var out bytes.Buffer
	_, err := replay.Replay(ctx, replay.Config{JetStream: c.js, Select: replay.Selection{OrderID: orderID}, Verifier: c.cfg.Verifier, Out: &out})
	if err != nil && !errors.Is(err, replay.ErrVerifyFailed) {
		// A signature that does not verify is shown, not an error.
		return nil, fmt.Errorf("events of order %s: %w: %v", orderID, httpapi.ErrUnavailable, err)
	}
	lines, err := decodeLines[TimelineEvent](out.Bytes())
	if err != nil {
		return nil, fmt.Errorf("events of order %s: %w", orderID, err)
	}
	return lines, nil
}

// ErrNoApply is returned when re-applying is not configured.
var ErrNoApply = errors.New("re-applying needs the workers' allocation settings: start the console with the workers' -rules and Cobo API flags, or -no-allocations when they run without rules")

// ReapplyResult is what re-applying an order's events did.
type ReapplyResult struct {
	OrderID string `json:"order_id"`
	// Events are the lines `worker replay -apply` prints, without the
	// bodies.
	Events  []replay.Line  `json:"events"`
	Summary replay.Summary `json:"summary"`
	// Before and After are the order's state around the re-apply (nil when
	// it did not exist); Changes says in words what differs.
	Before  *domain.OrderView `json:"before"`
	After   *domain.OrderView `json:"after"`
	Changes []string          `json:"changes"`
	// Error is set when some event could not be applied (see the events'
	// "applied"); running it again is safe.
	Error string `json:"error,omitempty"`
}

// reapply runs the order's stored events through the workers' path again
// (replay.Replay with Apply), as `worker replay -order ID -apply` does,
// and compares the order before and after.
func (c *Console) reapply(ctx context.Context, orderID string) (ReapplyResult, error) {
	if !c.cfg.canApply() {
		return ReapplyResult{}, fmt.Errorf("%w: %v", domain.ErrInvalid, ErrNoApply)
	}
	res := ReapplyResult{OrderID: orderID, Events: []replay.Line{}}
	before, err := c.order(ctx, orderID)
	switch {
	case err == nil:
		res.Before = &before.Order
	case !errors.Is(err, domain.ErrNotFound):
		return res, err
	}
	var out bytes.Buffer
	stream := c.cfg.Stream
	stream.Logger = c.cfg.Logger
	sum, err := replay.Replay(ctx, replay.Config{
		JetStream: c.js, Select: replay.Selection{OrderID: orderID}, Verifier: c.cfg.Verifier,
		Apply: true, Allocation: c.cfg.Allocation, NoAllocations: c.cfg.NoAllocations, Stream: stream,
		Out: &out, Logger: c.cfg.Logger,
	})
	res.Summary = sum
	switch {
	case errors.Is(err, replay.ErrApplyFailed) || errors.Is(err, replay.ErrVerifyFailed):
		res.Error = err.Error()
	case err != nil:
		return res, fmt.Errorf("re-apply order %s: %w: %v", orderID, httpapi.ErrUnavailable, err)
	}
	lines, err := decodeLines[TimelineEvent](out.Bytes())
	if err != nil {
		return res, fmt.Errorf("re-apply order %s: %w", orderID, err)
	}
	for _, l := range lines {
		res.Events = append(res.Events, l.Line)
	}
	after, err := c.order(ctx, orderID)
	switch {
	case err == nil:
		res.After = &after.Order
	case !errors.Is(err, domain.ErrNotFound):
		return res, err
	}
	res.Changes = changes(res.Before, res.After)
	return res, nil
}

// changes says in words how the order differs between before and after.
func changes(before, after *domain.OrderView) []string {
	var out []string
	switch {
	case before == nil && after == nil:
		return []string{"nothing: no event of the order changes its state"}
	case before == nil:
		return []string{fmt.Sprintf("order created with status %s", after.Status)}
	case after == nil:
		return []string{"the order is gone"}
	}
	if before.Status != after.Status {
		out = append(out, fmt.Sprintf("status %s → %s", before.Status, after.Status))
	}
	if was, is := nullString(before.ReceivedTokenAmount), nullString(after.ReceivedTokenAmount); was != is {
		out = append(out, fmt.Sprintf("received amount %s → %s", was, is))
	}
	for _, d := range after.Deposits[min(len(before.Deposits), len(after.Deposits)):] {
		out = append(out, fmt.Sprintf("deposit %s of %s %s recorded", d.TransactionID, d.Amount, d.TokenID))
	}
	for _, lp := range after.LatePayments[min(len(before.LatePayments), len(after.LatePayments)):] {
		out = append(out, fmt.Sprintf("late payment %s of %s %s recorded", lp.TransactionID, lp.Amount, lp.TokenID))
	}
	was := map[string]domain.AllocationItem{}
	for _, it := range before.Allocations {
		was[it.ID] = it
	}
	for _, it := range after.Allocations {
		old, ok := was[it.ID]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("allocation %s planned: %s %s to %s (%s)", it.ID, it.Amount, it.TokenID, it.Destination, it.Backend))
		case old.Status != it.Status:
			out = append(out, fmt.Sprintf("allocation %s %s → %s", it.ID, old.Status, it.Status))
		}
	}
	if len(out) == 0 {
		out = append(out, "nothing: the stored state was already current")
	}
	return out
}

func nullString(d decimal.NullDecimal) string {
	if !d.Valid {
		return "unset"
	}
	return d.Decimal.String()
}
