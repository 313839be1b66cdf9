package handlers_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/testutil"
)

func ptr(b bool) *bool { return &b }

// listedOrder is Cobo's record of a lifecycle-like order: Completed with
// its deposit and a late deposit, under Cobo's own tx ids (not the
// webhooks' transaction ids) with the on-chain hashes the webhooks carry.
func listedOrder(orderID string, isLate *bool) cobo.OrderData {
	return testutil.CoboOrder(orderID, "M1001", "Completed", 300, "102.000001",
		testutil.CoboTx("cobo-"+orderID+"-1", "0xdep-"+orderID, "102.000001", ptr(false)),
		testutil.CoboTx("cobo-"+orderID+"-2", "0xlate-"+orderID, "5.123456", isLate))
}

// hashedLifecycle is the order's webhooks, whose transaction ids differ
// from Cobo's tx ids while their hashes match.
func hashedLifecycle(orderID string) [][]byte {
	return [][]byte{
		testutil.OrderEvent(orderID+"-pending", orderID, "M1001", "Pending", 100, "0"),
		testutil.TransactionEventWithHash(orderID+"-txc", "completed", orderID, "wh-tx1", "0xdep-"+orderID, "102.000001"),
		testutil.OrderEvent(orderID+"-completed", orderID, "M1001", "Completed", 200, "102.000001"),
		testutil.TransactionEventWithHash(orderID+"-late", "late", orderID, "wh-tx2", "0xlate-"+orderID, "5.123456"),
		testutil.LateNoticeEvent(orderID+"-notice", orderID, "M1001", "Completed", 300, "102", "wh-tx2", "0xlate-"+orderID, "5.12"),
	}
}

// providerFor is the order API's answer for o, as allocation.CoboOrders
// maps it.
func providerFor(o cobo.OrderData) *handlers.ProviderOrder {
	po := &handlers.ProviderOrder{Snapshot: handlers.SnapshotFromOrder(o)}
	for _, tx := range o.Transactions {
		po.Transactions = append(po.Transactions, handlers.ProviderTx{ID: tx.TxID, Hash: tx.TxHash, Amount: tx.Amount.NullDecimal})
	}
	return po
}

// TestReconcileAndWebhooksInEveryOrderPlanOnce applies Cobo's record of an
// order (reconciliation) at every position among its webhooks, in every
// order of the webhooks, each twice: the order completes once, each split
// and the late credit are planned once, and one deposit and one late
// payment are recorded, although Cobo's tx ids are not the webhooks'
// transaction ids (the hashes tie them).
func TestReconcileAndWebhooksInEveryOrderPlanOnce(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	rules := testRules(t)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(rules), handlers.WithFetcher(api))
	ctx := context.Background()
	const reconcile = -1
	perms := permutations(6)
	for i, p := range perms {
		orderID := fmt.Sprintf("O-rec-%d", i)
		listed := listedOrder(orderID, ptr(true))
		api.mu.Lock()
		api.orders[orderID] = providerFor(listed)
		api.mu.Unlock()
		evs := hashedLifecycle(orderID)
		planned := map[string]int{}
		completed, late := 0, 0
		for _, idx := range p {
			if idx == len(evs) {
				idx = reconcile
			}
			for range 2 {
				var out handlers.Outcome
				var err error
				if idx == reconcile {
					out, err = h.Reconcile(ctx, listed)
				} else {
					out, err = h.Handle(ctx, delivery(t, evs[idx]))
				}
				require.NoError(t, err, "permutation %v", p)
				require.Empty(t, out.Unclassified, "permutation %v", p)
				for _, it := range out.Planned {
					planned[it.ID]++
				}
				if out.FirstCompleted {
					completed++
				}
				late += len(out.LateRecorded)
			}
		}
		require.Equal(t, 1, completed, "permutation %v", p)
		require.Equal(t, 1, late, "permutation %v", p)
		require.Len(t, planned, 2, "the split and the late credit, permutation %v", p)
		for id, n := range planned {
			require.Equal(t, 1, n, "item %s, permutation %v", id, p)
		}
		o, _, err := store.Get(ctx, orderID)
		require.NoError(t, err)
		require.Equal(t, domain.StatusCompleted, o.Status)
		require.Len(t, o.Deposits, 1, "permutation %v", p)
		require.Len(t, o.LatePayments, 1, "permutation %v", p)
		require.True(t, o.LatePayments[0].Precise)
		require.Equal(t, "5.123456", o.LatePayments[0].Amount.String())
		require.Equal(t, "0xlate-"+orderID, o.LatePayments[0].TxHash)
		require.Empty(t, o.Unclassified)
		require.True(t, handlers.FindGap(o, listed).None(), "permutation %v", p)
	}
}

// TestReconcileRepairsAndIsIdempotent: an order paystream never saw is
// completed from Cobo's record alone, with its splits planned from it, the
// deposit recorded and the late deposit credited; the same record again
// changes nothing; webhooks arriving afterwards plan nothing more.
func TestReconcileRepairsAndIsIdempotent(t *testing.T) {
	store := newStore(t)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()
	listed := listedOrder("O-rep", ptr(true))
	api.orders["O-rep"] = providerFor(listed)
	gap := handlers.FindGap(nil, listed)
	require.True(t, gap.FinalStatus)
	require.Len(t, gap.Transactions, 2)
	require.Equal(t, []string{handlers.GapFinalStatus, handlers.GapTransactions}, gap.Reasons())

	out, err := h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Equal(t, handlers.Applied, out.Result)
	require.True(t, out.FirstCompleted)
	require.Equal(t, domain.StatusCompleted, out.StatusTo)
	require.Len(t, out.Planned, 2)
	require.Len(t, out.LateRecorded, 1)
	require.Equal(t, "cobo-O-rep-2", out.LateRecorded[0].TransactionID)
	require.True(t, out.LateRecorded[0].Reconciled)
	require.Equal(t, domain.ReconcileSource, out.Order.CompletedByEvent)
	require.True(t, handlers.FindGap(out.Order, listed).None())
	api.asked = 0

	out, err = h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Equal(t, handlers.Unchanged, out.Result)
	require.Empty(t, out.Planned)
	require.Zero(t, api.asked, "reconciling asks Cobo nothing more")

	before, _, err := store.Get(ctx, "O-rep")
	require.NoError(t, err)
	for _, ev := range hashedLifecycle("O-rep") {
		out, err := h.Handle(ctx, delivery(t, ev))
		require.NoError(t, err)
		require.Empty(t, out.Planned)
		require.Empty(t, out.LateRecorded)
		require.False(t, out.FirstCompleted)
	}
	after, _, err := store.Get(ctx, "O-rep")
	require.NoError(t, err)
	require.Equal(t, viewJSON(t, before, "O-rep"), viewJSON(t, after, "O-rep"), "webhooks after the repair change nothing in the order's view")
}

// TestReconcileNeverGuessesLateness: on a final order, a completed
// transaction paystream lacks and Cobo does not mark late or not is
// recorded unclassified once, never credited, and still reported missing
// by FindGap, until a webhook says it is late. On an order that is not
// final it can only be a deposit.
func TestReconcileNeverGuessesLateness(t *testing.T) {
	store := newStore(t)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()
	listed := listedOrder("O-unk", nil)
	api.orders["O-unk"] = providerFor(listed)

	out, err := h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Len(t, out.Planned, 1, "the split only: the transaction of unknown lateness is not credited")
	require.Empty(t, out.LateRecorded)
	require.Len(t, out.Unclassified, 1)
	u := out.Unclassified[0]
	require.Equal(t, domain.UnclassifiedLatenessUnknown, u.Reason)
	require.Equal(t, "cobo-O-unk-2", u.TransactionID)
	require.Equal(t, "5.123456", u.Amount.Decimal.String())
	require.Len(t, out.Order.Deposits, 1, "the one Cobo marks not late is a deposit")
	gap := handlers.FindGap(out.Order, listed)
	require.False(t, gap.FinalStatus)
	require.Len(t, gap.Transactions, 1, "still missing: nothing classified it")

	out, err = h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Equal(t, handlers.Unchanged, out.Result)
	require.Empty(t, out.Unclassified, "reported once")

	// Cobo's webhook says it is late: credited once, the doubt cleared.
	out, err = h.Handle(ctx, delivery(t, testutil.TransactionEventWithHash("late-unk", "late", "O-unk", "wh-tx2", "0xlate-O-unk", "5.123456")))
	require.NoError(t, err)
	require.Len(t, out.LateRecorded, 1)
	require.Len(t, out.Planned, 1)
	require.Empty(t, out.Order.Unclassified)
	require.True(t, handlers.FindGap(out.Order, listed).None())

	// Not final: the transaction cannot be late, so it is a deposit.
	processing := testutil.CoboOrder("O-proc", "M1001", "Processing", 150, "50",
		testutil.CoboTx("cobo-p1", "0xp1", "50", nil))
	out, err = h.Reconcile(ctx, processing)
	require.NoError(t, err)
	require.Empty(t, out.Unclassified)
	require.Empty(t, out.Planned)
	require.Len(t, out.Order.Deposits, 1)
	require.Equal(t, "0xp1", out.Order.Deposits[0].TxHash)
	require.Equal(t, domain.StatusProcessing, out.Order.Status)
	require.True(t, handlers.FindGap(out.Order, processing).None())

	// A late transaction without a positive amount cannot be credited.
	noAmount := testutil.CoboOrder("O-zero", "M1001", "Expired", 150, "0", testutil.CoboTx("cobo-z", "0xz", "0", ptr(true)))
	out, err = h.Reconcile(ctx, noAmount)
	require.NoError(t, err)
	require.Empty(t, out.Planned)
	require.Len(t, out.Unclassified, 1)
	require.Equal(t, domain.UnclassifiedNoAmount, out.Unclassified[0].Reason)

	_, err = h.Reconcile(ctx, cobo.OrderData{Status: "Completed"})
	require.ErrorIs(t, err, domain.ErrInvalid)
}

// TestLatePaymentWithoutHashIsNotCreditedTwice: a late payment the webhooks
// recorded without a hash (before hashes were stored, or a webhook without
// one), and one Cobo's list reports under another id, may be the same
// transaction: the second is not credited but left to an operator; and
// the other way round.
func TestLatePaymentWithoutHashIsNotCreditedTwice(t *testing.T) {
	store := newStore(t)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()

	// Webhook first, without a hash; then Cobo's list under its own id.
	listed := listedOrder("O-amb1", ptr(true))
	api.orders["O-amb1"] = providerFor(listed)
	out, err := h.Handle(ctx, delivery(t, testutil.TransactionEvent("l1", "late", "O-amb1", "wh-tx2", "5.123456")))
	require.NoError(t, err)
	require.Len(t, out.LateRecorded, 1)
	out, err = h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Empty(t, out.LateRecorded)
	for _, it := range out.Planned {
		require.NotEqual(t, domain.KindLate, it.Kind, "no second credit")
	}
	require.Len(t, out.Unclassified, 1)
	require.Equal(t, domain.UnclassifiedAmbiguous, out.Unclassified[0].Reason)

	// Cobo's list first; then a webhook without a hash under another id.
	listed = listedOrder("O-amb2", ptr(true))
	api.orders["O-amb2"] = providerFor(listed)
	out, err = h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Len(t, out.LateRecorded, 1)
	out, err = h.Handle(ctx, delivery(t, testutil.TransactionEvent("l2", "late", "O-amb2", "wh-tx2", "5.123456")))
	require.NoError(t, err)
	require.Empty(t, out.LateRecorded)
	require.Empty(t, out.Planned)
	require.Len(t, out.Unclassified, 1)
	require.Equal(t, domain.UnclassifiedAmbiguous, out.Unclassified[0].Reason)

	// With the same id on both sides (Cobo's tx_id may well be the
	// transaction_id), no hash is needed.
	listed = testutil.CoboOrder("O-same", "M1001", "Completed", 300, "102.000001", testutil.CoboTx("wh-tx2", "", "5.123456", ptr(true)))
	api.orders["O-same"] = providerFor(listed)
	out, err = h.Handle(ctx, delivery(t, testutil.TransactionEvent("l3", "late", "O-same", "wh-tx2", "5.123456")))
	require.NoError(t, err)
	require.Len(t, out.LateRecorded, 1)
	out, err = h.Reconcile(ctx, listed)
	require.NoError(t, err)
	require.Empty(t, out.LateRecorded)
	require.Empty(t, out.Unclassified)
}
