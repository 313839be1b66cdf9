package allocation

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// OrderRepo reads and writes order state with compare-and-set.
type OrderRepo interface {
	Get(ctx context.Context, orderID string) (*domain.Order, uint64, error)
	Put(ctx context.Context, o *domain.Order, rev uint64) (uint64, error)
}

// An intent on the stream only names an item; the order decides what is
// sent. Anything able to publish on paystream.alloc.> can put any JSON
// there, so the senders (Batcher.flush, BitGoSender.deliver) load the
// order the intent names and send the order's copy of the item, never the
// intent's fields. An intent is then one of three things:
//
//   - sendable: it names an item on its order, every field the provider
//     would see or that routes it is the order's, and the item is planned
//     (or in flight under the sender's own persisted request, see each
//     sender);
//   - stale: it names such an item, but the item is final or already in
//     flight elsewhere, as a redelivery after a crash or a lost ack does.
//     It is acked without sending and logged at debug level;
//   - rejected: anything else (see the Reject reasons). It is acked, never
//     redelivered, logged at error level with what differed, counted in
//     paystream_allocation_intents_rejected_total{backend,reason}, and
//     nothing is sent for it. The item it names, if any, is untouched: the
//     order's genuine intent still sends it.

// Reasons an intent is rejected: the values of the reason label of
// paystream_allocation_intents_rejected_total. The set is closed, so the
// label stays bounded whatever is published.
const (
	// RejectUndecodable: the message is not an allocation item with an id.
	RejectUndecodable = "undecodable"
	// RejectWrongBackend: the intent's backend is not the one of the
	// subject it came on (the consumer's).
	RejectWrongBackend = "wrong_backend"
	// RejectNoOrder: the order it names does not exist.
	RejectNoOrder = "no_order"
	// RejectNoItem: the order has no item with its id.
	RejectNoItem = "no_item"
	// RejectMismatch: the order's item differs from the intent in token,
	// amount, source, destination, description, backend or order id, or
	// the subject names another order.
	RejectMismatch = "mismatch"
)

var rejectReasons = []string{RejectUndecodable, RejectWrongBackend, RejectNoOrder, RejectNoItem, RejectMismatch}

// rejection is why an intent is not sent: a bounded reason for the metric
// and a detail for the log.
type rejection struct {
	reason string
	detail string
}

// checkSubject rejects an intent that did not arrive where the outbox
// publishes it: paystream.alloc.<backend>.<token of its order id>, with
// backend the consumer's.
func checkSubject(backend, subject string, it domain.AllocationItem) *rejection {
	want := IntentSubjectPrefix + "." + backend + "."
	switch {
	case it.Backend != backend || !strings.HasPrefix(subject, want):
		return &rejection{RejectWrongBackend, fmt.Sprintf("backend: intent %q on subject %q", clip(it.Backend), clip(subject))}
	case subject != want+events.Token(it.OrderID):
		return &rejection{RejectMismatch, fmt.Sprintf("subject: %q does not name the intent's order", clip(subject))}
	}
	return nil
}

// matchOrder returns a copy of o's item named by the intent, or why the
// intent is rejected: o is nil (no such order), o has no item with the
// intent's id, or the item's stored fields differ from the intent's. The
// item's status is the caller's to judge.
func matchOrder(it domain.AllocationItem, o *domain.Order) (domain.AllocationItem, *rejection) {
	if o == nil {
		return domain.AllocationItem{}, &rejection{RejectNoOrder, "no such order"}
	}
	cur := o.Allocation(it.ID)
	if cur == nil {
		return domain.AllocationItem{}, &rejection{RejectNoItem, "the order has no such item"}
	}
	if d := itemDiff("intent", it, *cur); d != "" {
		return domain.AllocationItem{}, &rejection{RejectMismatch, d}
	}
	if o.OrderID != it.OrderID {
		// Two order ids can share a key only through a hash collision,
		// but the order is what is believed, so say so.
		return domain.AllocationItem{}, &rejection{RejectMismatch, fmt.Sprintf("order_id: intent %q, stored order %q", clip(it.OrderID), clip(o.OrderID))}
	}
	return *cur, nil
}

// itemDiff lists, for the log, the fields of got (named what: "intent")
// that differ from the order's copy want, among those a provider sees or
// that route the item; "" when none do. Status and outcome fields are not
// compared: they move on the order after the intent is published.
func itemDiff(what string, got, want domain.AllocationItem) string {
	var diffs []string
	field := func(name, g, w string) {
		if g != w {
			diffs = append(diffs, fmt.Sprintf("%s: %s %q, order %q", name, what, clip(g), clip(w)))
		}
	}
	field("order_id", got.OrderID, want.OrderID)
	field("backend", got.Backend, want.Backend)
	field("token_id", got.TokenID, want.TokenID)
	if !amountsEqual(got.Amount, want.Amount) {
		diffs = append(diffs, fmt.Sprintf("amount: %s %s, order %s", what, amountString(got.Amount), amountString(want.Amount)))
	}
	field("source_account", got.Source, want.Source)
	field("destination_account", got.Destination, want.Destination)
	field("description", got.Description, want.Description)
	return strings.Join(diffs, "; ")
}

// maxExponent bounds the exponents compared or printed. Planned amounts
// have at most AmountDecimals decimals, while a published "1e999999999"
// would make decimal's comparison and String build a billion-digit
// number.
const maxExponent = 64

func amountsEqual(a, b decimal.Decimal) bool {
	if e := a.Exponent(); e > maxExponent || e < -maxExponent {
		return false
	}
	if e := b.Exponent(); e > maxExponent || e < -maxExponent {
		return false
	}
	return a.Equal(b)
}

func amountString(d decimal.Decimal) string {
	if e := d.Exponent(); e > maxExponent || e < -maxExponent {
		return "(exponent " + strconv.Itoa(int(e)) + ")"
	}
	return clip(d.String())
}

// clip bounds a value taken from an intent before it is logged: whoever
// published it chose its length.
func clip(s string) string {
	const n = 96
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// rejectIntent logs a rejected intent at error level and counts it. The
// caller acks (or terms) the message: a rejection is never redelivered.
func rejectIntent(log zerolog.Logger, m *Metrics, backend, subject string, it domain.AllocationItem, r *rejection) {
	m.intentsRejected.WithLabelValues(backend, r.reason).Inc()
	log.Error().Str("backend", backend).Str("reason", r.reason).Str("order_id", clip(it.OrderID)).Str("item_id", clip(it.ID)).
		Str("subject", clip(subject)).Str("detail", r.detail).
		Msg("allocation intent rejected: it does not name an item as planned on its order; nothing sent")
}

// staleIntent logs an intent for an item that is already final or in
// flight elsewhere. It is acked without sending and not counted.
func staleIntent(log zerolog.Logger, it domain.AllocationItem, status, why string) {
	log.Debug().Str("order_id", it.OrderID).Str("item_id", it.ID).Str("status", status).Str("request_id", it.RequestID).
		Msg("stale allocation intent acked without sending: " + why)
}

// recordAttempts bounds the compare-and-set retries of one outcome write;
// each conflict means another writer changed the order meanwhile.
const recordAttempts = 50

// updateItems writes outcomes onto order orderID's allocation items with
// compare-and-set. change is called for each item still not final and says
// whether it changed it; the order is written only when one did, and the
// whole read-change-write is redone on a conflict. It returns the items as
// written, none when nothing needed changing (an outcome recorded before,
// or items the order no longer has).
func updateItems(ctx context.Context, orders OrderRepo, orderID string, change func(cur *domain.AllocationItem) bool) ([]domain.AllocationItem, error) {
	for range recordAttempts {
		o, rev, err := orders.Get(ctx, orderID)
		if err != nil {
			return nil, fmt.Errorf("load order %s: %w", orderID, err)
		}
		var changed []domain.AllocationItem
		for i := range o.Allocations {
			cur := &o.Allocations[i]
			if !cur.Final() && change(cur) {
				changed = append(changed, *cur)
			}
		}
		if len(changed) == 0 {
			return nil, nil
		}
		if _, err := orders.Put(ctx, o, rev); err != nil {
			if errors.Is(err, domain.ErrConflict) {
				continue
			}
			return nil, fmt.Errorf("record allocations on order %s: %w", orderID, err)
		}
		return changed, nil
	}
	return nil, fmt.Errorf("record allocations on order %s: %w", orderID, domain.ErrConflict)
}
