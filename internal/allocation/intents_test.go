package allocation

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// The senders' end-to-end behaviour on forged intents is in
// internal/e2e/intents_test.go; this covers every verdict of the checks.

func plannedItem() domain.AllocationItem {
	return domain.AllocationItem{
		ID: "O-1:split:0:developer", Kind: domain.KindSplit, OrderID: "O-1", Backend: domain.BackendCobo, TokenID: "ETH_USDT",
		Amount: decimal.RequireFromString("10.5"), Source: "M1001", Destination: "developer",
		Description: "platform commission O-1", Status: domain.AllocPlanned,
	}
}

func TestCheckSubject(t *testing.T) {
	it := plannedItem()
	require.Nil(t, checkSubject(domain.BackendCobo, "paystream.alloc.cobo.O-1", it))

	rej := checkSubject(domain.BackendBitGo, "paystream.alloc.bitgo.O-1", it)
	require.NotNil(t, rej)
	require.Equal(t, RejectWrongBackend, rej.reason, "a Cobo item on the BitGo subject")

	it.Backend = domain.BackendBitGo
	rej = checkSubject(domain.BackendCobo, "paystream.alloc.cobo.O-1", it)
	require.NotNil(t, rej)
	require.Equal(t, RejectWrongBackend, rej.reason, "an intent claiming BitGo on the Cobo subject")

	rej = checkSubject(domain.BackendCobo, "paystream.alloc.cobo.O-2", plannedItem())
	require.NotNil(t, rej)
	require.Equal(t, RejectMismatch, rej.reason, "the subject names another order")
}

func TestMatchOrder(t *testing.T) {
	stored := plannedItem()
	order := func() *domain.Order {
		return &domain.Order{OrderID: "O-1", Allocations: []domain.AllocationItem{stored}}
	}
	cases := []struct {
		name    string
		edit    func(*domain.AllocationItem)
		noOrder bool
		reason  string
		differ  string
	}{
		{name: "identical", edit: func(*domain.AllocationItem) {}},
		{name: "same amount written differently", edit: func(it *domain.AllocationItem) { it.Amount = decimal.RequireFromString("10.500000") }},
		{name: "status and outcome fields are the order's business", edit: func(it *domain.AllocationItem) {
			it.Status, it.RequestID, it.ProviderID, it.Reason = domain.AllocCompleted, "r", "p", "x"
		}},
		{name: "no order", edit: func(*domain.AllocationItem) {}, noOrder: true, reason: RejectNoOrder},
		{name: "no item", edit: func(it *domain.AllocationItem) { it.ID = "O-1:split:9:attacker" }, reason: RejectNoItem},
		{name: "amount", edit: func(it *domain.AllocationItem) { it.Amount = decimal.RequireFromString("999999") }, reason: RejectMismatch, differ: "amount: intent 999999, order 10.5"},
		{name: "huge exponent", edit: func(it *domain.AllocationItem) { it.Amount = decimal.New(1, 999999999) }, reason: RejectMismatch, differ: "amount: intent (exponent 999999999)"},
		{name: "destination", edit: func(it *domain.AllocationItem) { it.Destination = "attacker" }, reason: RejectMismatch, differ: `destination_account: intent "attacker", order "developer"`},
		{name: "source", edit: func(it *domain.AllocationItem) { it.Source = "developer" }, reason: RejectMismatch, differ: "source_account"},
		{name: "token", edit: func(it *domain.AllocationItem) { it.TokenID = "TRON_USDT" }, reason: RejectMismatch, differ: "token_id"},
		{name: "description", edit: func(it *domain.AllocationItem) { it.Description = "x" }, reason: RejectMismatch, differ: "description"},
		{name: "backend", edit: func(it *domain.AllocationItem) { it.Backend = domain.BackendBitGo }, reason: RejectMismatch, differ: "backend"},
		{name: "order id", edit: func(it *domain.AllocationItem) { it.OrderID = "O-2" }, reason: RejectMismatch, differ: "order_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			it := plannedItem()
			tc.edit(&it)
			o := order()
			if tc.noOrder {
				o = nil
			}
			cur, rej := matchOrder(it, o)
			if tc.reason == "" {
				require.Nil(t, rej)
				require.Equal(t, stored, cur, "the order's copy, not the intent")
				return
			}
			require.NotNil(t, rej)
			require.Equal(t, tc.reason, rej.reason)
			require.Contains(t, rej.detail, tc.differ)
		})
	}
}

func TestClipBoundsLoggedValues(t *testing.T) {
	long := string(make([]byte, 10000))
	require.Less(t, len(clip(long)), 128)
	require.Equal(t, "short", clip("short"))
}
