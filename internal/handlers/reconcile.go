package handlers

import (
	"context"
	"fmt"
	"slices"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// Reconcile applies an order as Cobo's order API reported it to one of
// paystream's own signed requests (GET /payments/orders, or
// GET /payments/orders/{order_id}), the way reconciliation repairs an
// order whose webhooks never arrived. It goes through the same
// compare-and-set update and the same planning as a webhook event, so the
// status change, the splits and the late-payment credits happen exactly
// once whichever of the webhook and the reconciliation comes first, and
// applying the same answer again changes nothing.
//
// The order is merged as a payment.order.status.updated snapshot would be,
// and it is also the confirmation planning needs: it is Cobo's answer to
// paystream's own API key, so the splits of a Completed order are planned
// from it without asking again. The caller must only pass what it read
// from Cobo's API itself; nothing read from a message may reach here.
//
// Its completed transactions are recorded: one Cobo marks late
// (is_late: true) as a late payment at full precision, credited when the
// rules credit late payments; one Cobo marks not late, or any while the
// order is not final (so it cannot be late), as a deposit. A transaction
// Cobo does not say is late or not, on a final order, that paystream has
// not recorded is neither: it is recorded unclassified and reported in
// Outcome.Unclassified, never credited. Transactions are matched to
// recorded ones by id or on-chain hash (domain.SameTransaction), since
// Cobo's tx_id may differ from the webhooks' transaction_id.
//
// An error wrapping domain.ErrInvalid means the answer can never be
// applied (it names no order); other errors are transient.
func (h *Handler) Reconcile(ctx context.Context, d cobo.OrderData) (Outcome, error) {
	if d.OrderID == "" {
		return Outcome{}, fmt.Errorf("reconcile: %w: Cobo's order has no order_id", domain.ErrInvalid)
	}
	snap := SnapshotFromOrder(d)
	token := firstNonEmpty(d.PayableCurrency, d.TokenID)
	return h.update(ctx, d.OrderID, func(o *domain.Order, fx *effects) {
		// confirm merges the snapshot and status as a webhook's would, and
		// keeps it as the confirmation planning reads.
		confirm(o, snap, domain.ReconcileSource, fx)
		for _, tx := range d.Transactions {
			reconcileTx(o, tx, token, fx)
		}
	})
}

// reconcileTx records one of Cobo's transactions of the order; see
// Reconcile. o's status already includes Cobo's.
func reconcileTx(o *domain.Order, tx cobo.OrderTransaction, token string, fx *effects) {
	id := txRef(tx)
	// A transaction not yet credited is not a deposit yet; one with
	// neither id nor hash could never be matched again, so recording it
	// would record it anew on every pass.
	if !tx.Completed() || id == "" {
		return
	}
	tokenID := firstNonEmpty(tx.TokenID, token)
	late := tx.IsLate != nil && *tx.IsLate
	switch {
	case late && (!tx.Amount.Valid || !tx.Amount.Decimal.IsPositive()):
		recordUnclassified(o, domain.UnclassifiedTx{TransactionID: id, TxHash: tx.TxHash, Amount: tx.Amount.NullDecimal, TokenID: tokenID,
			Reason: domain.UnclassifiedNoAmount, EventID: domain.ReconcileSource}, fx)
	case late:
		recordLate(o, domain.LatePayment{TransactionID: id, TxHash: tx.TxHash, Amount: tx.Amount.Decimal, TokenID: tokenID,
			Precise: true, EventID: domain.ReconcileSource, Reconciled: true, CreatedTimestamp: int64(tx.CreatedTimestamp)}, fx)
	case recorded(o, tx):
		return
	case tx.IsLate != nil || !o.Status.Final():
		// Cobo says it is not late, or the order is not final, so it
		// cannot be: a deposit, which moves no money.
		recordDeposit(o, domain.Deposit{TransactionID: id, TxHash: tx.TxHash, Amount: tx.Amount.Decimal, TokenID: tokenID, Reconciled: true}, fx)
	default:
		// On a final order it may be a deposit whose webhook was lost or a
		// late payment whose webhooks were lost: crediting it could pay a
		// deposit out twice, not crediting it could keep a merchant's
		// money. An operator decides.
		recordUnclassified(o, domain.UnclassifiedTx{TransactionID: id, TxHash: tx.TxHash, Amount: tx.Amount.NullDecimal, TokenID: tokenID,
			Reason: domain.UnclassifiedLatenessUnknown, EventID: domain.ReconcileSource}, fx)
	}
}

// txRef is the id a transaction is recorded under: Cobo's tx_id, else
// its hash.
func txRef(tx cobo.OrderTransaction) string { return firstNonEmpty(tx.TxID, tx.TxHash) }

// recorded reports whether the order holds tx as a deposit or a late
// payment (by id or hash).
func recorded(o *domain.Order, tx cobo.OrderTransaction) bool {
	id := txRef(tx)
	return slices.ContainsFunc(o.Deposits, func(x domain.Deposit) bool {
		return domain.SameTransaction(x.TransactionID, x.TxHash, id, tx.TxHash)
	}) || slices.ContainsFunc(o.LatePayments, func(x domain.LatePayment) bool {
		return domain.SameTransaction(x.TransactionID, x.TxHash, id, tx.TxHash)
	})
}

// creditedLate reports whether the order holds tx as a late payment at
// full precision, the form that is credited.
func creditedLate(o *domain.Order, tx cobo.OrderTransaction) bool {
	id := txRef(tx)
	return slices.ContainsFunc(o.LatePayments, func(x domain.LatePayment) bool {
		return x.Precise && domain.SameTransaction(x.TransactionID, x.TxHash, id, tx.TxHash)
	})
}

// Gap is what paystream's state lacks of an order as Cobo's order API
// reports it.
type Gap struct {
	// FinalStatus: Cobo has the order in a final status and paystream's
	// state is not final (or paystream never saw the order).
	FinalStatus bool
	// Transactions are Cobo's completed transactions paystream has not
	// recorded as it should: one Cobo marks late that is not a late
	// payment at full precision, any other that is neither a deposit nor
	// a late payment.
	Transactions []cobo.OrderTransaction
}

// Gap reasons, as FindGap's Reasons spell them.
const (
	GapFinalStatus  = "final_status"
	GapTransactions = "transactions"
)

// None reports whether paystream lacks nothing.
func (g Gap) None() bool { return !g.FinalStatus && len(g.Transactions) == 0 }

// Reasons names the gaps: GapFinalStatus and GapTransactions.
func (g Gap) Reasons() []string {
	var out []string
	if g.FinalStatus {
		out = append(out, GapFinalStatus)
	}
	if len(g.Transactions) > 0 {
		out = append(out, GapTransactions)
	}
	return out
}

// FindGap compares paystream's state of an order (nil when it has none)
// with Cobo's. A transaction recorded unclassified still counts as
// lacking: nothing has credited or classified it yet.
func FindGap(o *domain.Order, d cobo.OrderData) Gap {
	if o == nil {
		o = &domain.Order{OrderID: d.OrderID}
	}
	var g Gap
	if s := domain.OrderStatus(d.Status); s.Final() && !o.Status.Final() {
		g.FinalStatus = true
	}
	for _, tx := range d.Transactions {
		if !tx.Completed() || txRef(tx) == "" {
			continue
		}
		late := tx.IsLate != nil && *tx.IsLate
		if late && !creditedLate(o, tx) || !late && !recorded(o, tx) {
			g.Transactions = append(g.Transactions, tx)
		}
	}
	return g
}
