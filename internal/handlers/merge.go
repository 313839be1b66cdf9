package handlers

import (
	"slices"
	"strings"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// effects are what one committed change means beyond the stored state.
type effects struct {
	changed bool
	// firstCompleted: this change moved the order to Completed for the first time.
	firstCompleted bool
	// lateRecorded: late payments whose precise amount this change recorded first.
	lateRecorded []domain.LatePayment
	// conflictingFinal: a final status that contradicts the stored one.
	conflictingFinal domain.OrderStatus
	// planned: allocation items this change added.
	planned []domain.AllocationItem
	// statusTo is the status this change moved the order to, if any.
	statusTo domain.OrderStatus
	// confirmed is the order as the provider's API answered for this
	// change; allocations are planned from it alone.
	confirmed *domain.Snapshot
	// unclassified: transactions this change recorded as unclassified.
	unclassified []domain.UnclassifiedTx
}

// confirm merges the provider's answer about the order, when there is one,
// and keeps it for planning.
func confirm(o *domain.Order, s *domain.Snapshot, eventID string, fx *effects) {
	if s == nil {
		return
	}
	mergeSnapshot(&o.Snapshot, s, fx)
	mergeStatus(o, s.Status, eventID, fx)
	fx.confirmed = s
}

// mergeStatus moves the order forward: Pending < Processing < final, and a
// final status is terminal.
func mergeStatus(o *domain.Order, s domain.OrderStatus, eventID string, fx *effects) {
	if !s.Known() {
		return
	}
	cur := o.Status
	if cur.Final() {
		if s.Final() && s != cur && !slices.Contains(o.ConflictingFinals, s) {
			o.ConflictingFinals = append(o.ConflictingFinals, s)
			slices.Sort(o.ConflictingFinals)
			fx.changed = true
			fx.conflictingFinal = s
		}
		return
	}
	if s.Rank() <= cur.Rank() {
		return
	}
	o.Status = s
	fx.changed = true
	fx.statusTo = s
	if s == domain.StatusCompleted && o.CompletedByEvent == "" {
		o.CompletedByEvent = eventID
		fx.firstCompleted = true
	}
}

// newer reports whether snapshot a should replace b: higher status rank,
// then later updated_timestamp, then more received. Equal snapshots are not
// newer, so duplicates change nothing and any arrival order gives one result.
func newer(a, b *domain.Snapshot) bool {
	if b == nil {
		return true
	}
	if ra, rb := a.Status.Rank(), b.Status.Rank(); ra != rb {
		return ra > rb
	}
	if a.UpdatedTimestamp != b.UpdatedTimestamp {
		return a.UpdatedTimestamp > b.UpdatedTimestamp
	}
	if c := a.ReceivedTokenAmount.Decimal.Cmp(b.ReceivedTokenAmount.Decimal); c != 0 && a.ReceivedTokenAmount.Valid && b.ReceivedTokenAmount.Valid {
		return c > 0
	}
	if a.ReceivedTokenAmount.Valid != b.ReceivedTokenAmount.Valid {
		return a.ReceivedTokenAmount.Valid
	}
	// Last resort: a total order on the content so that two different
	// snapshots with equal keys still resolve the same way in any order.
	return snapshotKey(a) > snapshotKey(b)
}

func snapshotKey(s *domain.Snapshot) string {
	return strings.Join([]string{string(s.Status), s.MerchantID, s.PayableCurrency,
		s.PayableAmount.Decimal.String(), s.PricingAmount.Decimal.String(), s.FeeAmount.Decimal.String(),
		s.OrderAmount.Decimal.String(), s.TokenID, s.PSPOrderCode}, "|")
}

// mergeSnapshot keeps the newer of the stored and incoming snapshot in slot.
func mergeSnapshot(slot **domain.Snapshot, s *domain.Snapshot, fx *effects) {
	if newer(s, *slot) {
		*slot = s
		fx.changed = true
	}
}

// recordLate records a late payment once per transaction, whose id or
// on-chain hash identifies it (domain.SameTransaction). A precise amount
// (payment.transaction.late, or Cobo's order API) replaces a truncated one
// from a payment.order.updated notice, and is reported once as recorded.
// A hash the stored entry lacks is filled in, so that later sources naming
// the transaction by hash alone find it.
//
// Webhooks name a transaction by transaction_id and Cobo's order API by
// tx_id, and whether they are equal is not documented: across the two
// sources only a hash proves two entries apart or alike. A precise late
// payment from one source that matches nothing while the order has
// entries from the other source, one of the two lacking a hash, may be one
// already credited, so it is not credited: it is recorded unclassified for
// an operator (never guess with money). So is a precise late payment on an
// order with a Horizon that was not certainly made after it (see
// domain.Order.Horizon).
func recordLate(o *domain.Order, lp domain.LatePayment, fx *effects) {
	i := slices.IndexFunc(o.LatePayments, func(x domain.LatePayment) bool {
		return domain.SameTransaction(x.TransactionID, x.TxHash, lp.TransactionID, lp.TxHash)
	})
	if lp.Precise && !(i >= 0 && o.LatePayments[i].Precise) && beforeHorizon(o, lp) {
		// Made before state of the order may have expired: it may have
		// been credited in that state, so it is not credited again.
		recordUnclassified(o, domain.UnclassifiedTx{TransactionID: lp.TransactionID, TxHash: lp.TxHash,
			Amount: decimal.NewNullDecimal(lp.Amount), TokenID: lp.TokenID, Reason: domain.UnclassifiedBeforeHorizon, EventID: lp.EventID}, fx)
		return
	}
	switch {
	case i < 0 && lp.Precise && ambiguousLate(o, lp):
		recordUnclassified(o, domain.UnclassifiedTx{TransactionID: lp.TransactionID, TxHash: lp.TxHash,
			Amount: decimal.NewNullDecimal(lp.Amount), TokenID: lp.TokenID, Reason: domain.UnclassifiedAmbiguous, EventID: lp.EventID}, fx)
		return
	case i < 0:
		o.LatePayments = append(o.LatePayments, lp)
		slices.SortFunc(o.LatePayments, func(a, b domain.LatePayment) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	case lp.Precise && !o.LatePayments[i].Precise:
		if lp.TxHash == "" {
			lp.TxHash = o.LatePayments[i].TxHash
		}
		o.LatePayments[i] = lp
		slices.SortFunc(o.LatePayments, func(a, b domain.LatePayment) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	case o.LatePayments[i].TxHash == "" && lp.TxHash != "" && o.LatePayments[i].TransactionID == lp.TransactionID:
		// Same transaction, now with its hash: remembered, nothing credited.
		o.LatePayments[i].TxHash = lp.TxHash
		fx.changed = true
		return
	default:
		return
	}
	fx.changed = true
	if lp.Precise {
		fx.lateRecorded = append(fx.lateRecorded, lp)
		// A credited late payment answers an earlier doubt about it.
		o.Unclassified = slices.DeleteFunc(o.Unclassified, func(u domain.UnclassifiedTx) bool {
			return u.Reason != domain.UnclassifiedAmbiguous && domain.SameTransaction(u.TransactionID, u.TxHash, lp.TransactionID, lp.TxHash)
		})
	}
}

// beforeHorizon reports whether the order has a Horizon and lp was not
// certainly made after it: made at or before it, or at a time Cobo did
// not give.
func beforeHorizon(o *domain.Order, lp domain.LatePayment) bool {
	return o.Horizon != nil && !cobo.Int64(lp.CreatedTimestamp).Time().After(*o.Horizon)
}

// ambiguousLate reports whether lp, which matches no recorded late
// payment, could still be one of them: recorded by the other source
// (webhook or reconciliation, whose ids may differ) with a hash missing
// on either side.
func ambiguousLate(o *domain.Order, lp domain.LatePayment) bool {
	return slices.ContainsFunc(o.LatePayments, func(x domain.LatePayment) bool {
		return x.Reconciled != lp.Reconciled && (x.TxHash == "" || lp.TxHash == "")
	})
}

// recordDeposit records a completed deposit once per transaction (id or
// hash), filling in a hash the stored entry lacks.
func recordDeposit(o *domain.Order, d domain.Deposit, fx *effects) {
	i := slices.IndexFunc(o.Deposits, func(x domain.Deposit) bool {
		return domain.SameTransaction(x.TransactionID, x.TxHash, d.TransactionID, d.TxHash)
	})
	switch {
	case i < 0:
		o.Deposits = append(o.Deposits, d)
		slices.SortFunc(o.Deposits, func(a, b domain.Deposit) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	case o.Deposits[i].TxHash == "" && d.TxHash != "" && o.Deposits[i].TransactionID == d.TransactionID:
		o.Deposits[i].TxHash = d.TxHash
	default:
		return
	}
	fx.changed = true
}

// recordUnclassified records, once per transaction (id or hash), a
// transaction nothing credited because its kind is unknown, and reports
// it once.
func recordUnclassified(o *domain.Order, u domain.UnclassifiedTx, fx *effects) {
	if slices.ContainsFunc(o.Unclassified, func(x domain.UnclassifiedTx) bool {
		return domain.SameTransaction(x.TransactionID, x.TxHash, u.TransactionID, u.TxHash)
	}) {
		return
	}
	o.Unclassified = append(o.Unclassified, u)
	slices.SortFunc(o.Unclassified, func(a, b domain.UnclassifiedTx) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	fx.changed = true
	fx.unclassified = append(fx.unclassified, u)
}
