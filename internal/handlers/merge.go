package handlers

import (
	"slices"
	"strings"

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

// recordLate records a late payment once per transaction id. A precise
// amount (from payment.transaction.late) replaces a truncated one from a
// payment.order.updated notice, and is reported once as recorded.
func recordLate(o *domain.Order, lp domain.LatePayment, fx *effects) {
	i := slices.IndexFunc(o.LatePayments, func(x domain.LatePayment) bool { return x.TransactionID == lp.TransactionID })
	switch {
	case i < 0:
		o.LatePayments = append(o.LatePayments, lp)
		slices.SortFunc(o.LatePayments, func(a, b domain.LatePayment) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	case lp.Precise && !o.LatePayments[i].Precise:
		o.LatePayments[i] = lp
	default:
		return
	}
	fx.changed = true
	if lp.Precise {
		fx.lateRecorded = append(fx.lateRecorded, lp)
	}
}

// recordDeposit records a completed deposit once per transaction id.
func recordDeposit(o *domain.Order, d domain.Deposit, fx *effects) {
	if slices.ContainsFunc(o.Deposits, func(x domain.Deposit) bool { return x.TransactionID == d.TransactionID }) {
		return
	}
	o.Deposits = append(o.Deposits, d)
	slices.SortFunc(o.Deposits, func(a, b domain.Deposit) int { return strings.Compare(a.TransactionID, b.TransactionID) })
	fx.changed = true
}
