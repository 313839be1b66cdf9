package allocation_test

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/domain"
)

const exampleRules = `{"splits": [
   {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"},
   {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"}],
 "late_payments": "credit_merchant"}`

func dec(s string) decimal.NullDecimal { return decimal.NewNullDecimal(decimal.RequireFromString(s)) }

func completedOrder(merchant, received string) *domain.Order {
	return &domain.Order{OrderID: "O1", Status: domain.StatusCompleted, Snapshot: &domain.Snapshot{
		Status: domain.StatusCompleted, MerchantID: merchant, PayableCurrency: "ETH_USDT",
		PricingAmount: dec("100.00"), FeeAmount: dec("2.00"), PayableAmount: dec("102.00"), ReceivedTokenAmount: dec(received),
	}}
}

func TestParseRules(t *testing.T) {
	r, err := allocation.ParseRules([]byte(exampleRules))
	require.NoError(t, err)
	require.Len(t, r.Splits, 2)
	require.True(t, r.NeedsMerchantForLate())

	r, err = allocation.ParseRules([]byte(`{"splits":[]}`))
	require.NoError(t, err)
	require.Equal(t, allocation.LateHold, r.LatePayments)

	bad := map[string]string{
		`{"splits":[{"merchant_id":"M1","destination_account":"d","share":"0","description":""}]}`:                                               "splits[0].share",
		`{"splits":[{"merchant_id":"M1","destination_account":"d","share":"1.01","description":""}]}`:                                            "splits[0].share",
		`{"splits":[{"merchant_id":"","destination_account":"d","share":"0.1","description":""}]}`:                                               "splits[0].merchant_id",
		`{"splits":[{"merchant_id":"M1","destination_account":"","share":"0.1","description":""}]}`:                                              "splits[0].destination_account",
		`{"splits":[{"merchant_id":"M1","destination_account":"bitgo:","share":"0.1","description":""}]}`:                                        "splits[0].destination_account",
		`{"splits":[{"merchant_id":"M1","destination_account":"a","share":"0.6"},{"merchant_id":"M1","destination_account":"b","share":"0.5"}]}`: `merchant "M1"`,
		`{"splits":[{"merchant_id":"M1","destination_account":"a","share":"0.6"},{"merchant_id":"*","destination_account":"b","share":"0.5"}]}`:  `merchant "M1"`,
		`{"splits":[],"late_payments":"refund"}`: "late_payments",
		`{"splits":[],"late":"hold"}`:            "unknown field",
		`{"splits":[{"merchant_id":"M1","destination_account":"d","share":0.1e,"description":""}]}`: "decode",
	}
	for body, want := range bad {
		_, err := allocation.ParseRules([]byte(body))
		require.ErrorContains(t, err, want, body)
	}
}

func TestSplitAmount(t *testing.T) {
	share := decimal.RequireFromString("0.10")
	cases := []struct {
		name    string
		snap    domain.Snapshot
		want    string
		wantErr bool
	}{
		// min(102, 102) × 100 × 0.10 / (100 + 2) = 10 exactly.
		{"exact", domain.Snapshot{PricingAmount: dec("100"), FeeAmount: dec("2"), PayableAmount: dec("102"), ReceivedTokenAmount: dec("102")}, "10", false},
		// Overpaid: capped at payable.
		{"overpaid", domain.Snapshot{PricingAmount: dec("100"), FeeAmount: dec("2"), PayableAmount: dec("102"), ReceivedTokenAmount: dec("150")}, "10", false},
		// 101.5 × 100 × 0.1 / 102 = 9.950980392... rounded DOWN to 6 places.
		{"rounds down", domain.Snapshot{PricingAmount: dec("100"), FeeAmount: dec("2"), PayableAmount: dec("102"), ReceivedTokenAmount: dec("101.5")}, "9.95098", false},
		// P falls back to order_amount, then payable − fee.
		{"order_amount", domain.Snapshot{OrderAmount: dec("50"), FeeAmount: dec("0"), PayableAmount: dec("50"), ReceivedTokenAmount: dec("50")}, "5", false},
		{"payable minus fee", domain.Snapshot{FeeAmount: dec("1"), PayableAmount: dec("11"), ReceivedTokenAmount: dec("11")}, "1", false},
		// 1/3-ish: 10 × 10 × 0.1 / 30 = 0.3333333… → 0.333333.
		{"repeating", domain.Snapshot{PricingAmount: dec("10"), FeeAmount: dec("20"), PayableAmount: dec("10"), ReceivedTokenAmount: dec("10")}, "0.333333", false},
		{"missing received", domain.Snapshot{PricingAmount: dec("10"), PayableAmount: dec("10")}, "", true},
		{"zero price", domain.Snapshot{PricingAmount: dec("0"), FeeAmount: dec("0"), PayableAmount: dec("10"), ReceivedTokenAmount: dec("10")}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := &domain.Order{OrderID: "O", Snapshot: &tc.snap}
			got, err := allocation.SplitAmount(o.View(), share)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.True(t, decimal.RequireFromString(tc.want).Equal(got), "got %s want %s", got, tc.want)
			require.LessOrEqual(t, -got.Exponent(), int32(allocation.AmountDecimals))
		})
	}
}

func TestPlanning(t *testing.T) {
	r, err := allocation.ParseRules([]byte(exampleRules))
	require.NoError(t, err)

	items := r.OnCompleted(completedOrder("M1001", "102"))
	require.Len(t, items, 2)
	require.Equal(t, "O1:split:0:developer", items[0].ID)
	require.Equal(t, "M1001", items[0].Source)
	require.Equal(t, "developer", items[0].Destination)
	require.Equal(t, "ETH_USDT", items[0].TokenID)
	require.Equal(t, "platform commission O1", items[0].Description)
	require.True(t, decimal.RequireFromString("10").Equal(items[0].Amount))
	require.True(t, decimal.RequireFromString("5").Equal(items[1].Amount))
	require.Equal(t, domain.AllocPlanned, items[1].Status)
	require.Equal(t, domain.BackendCobo, items[1].Backend)

	// Only the wildcard applies to another merchant.
	require.Len(t, r.OnCompleted(completedOrder("M2", "102")), 1)
	// A zero amount makes no item.
	require.Empty(t, r.OnCompleted(completedOrder("M2", "0")))

	late := r.OnLatePayment(completedOrder("M1001", "102"), domain.LatePayment{TransactionID: "tx9", Amount: decimal.RequireFromString("5.123456789"), TokenID: "ETH_USDT"})
	require.Len(t, late, 1)
	require.Equal(t, "O1:late:tx9", late[0].ID)
	require.Equal(t, "developer", late[0].Source)
	require.Equal(t, "M1001", late[0].Destination)
	require.Equal(t, "5.123456789", late[0].Amount.String(), "late payments move exactly destination.amount")
	require.Contains(t, late[0].Description, "tx9")
	require.Contains(t, late[0].Description, "O1")

	hold, err := allocation.ParseRules([]byte(`{"splits":[]}`))
	require.NoError(t, err)
	require.Empty(t, hold.OnLatePayment(completedOrder("M1001", "1"), domain.LatePayment{TransactionID: "t", Amount: decimal.NewFromInt(1)}))

	bitgo, err := allocation.ParseRules([]byte(`{"splits":[{"merchant_id":"*","destination_account":"bitgo:3fa85f64-5717-4562-b3fc-2c963f66afa6","share":"0.5","description":"to partner"}]}`))
	require.NoError(t, err)
	require.Equal(t, domain.BackendBitGo, bitgo.OnCompleted(completedOrder("M1", "102"))[0].Backend)
}
