package allocation_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
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
	require.Equal(t, "O1:split:M1001:developer", items[0].ID)
	require.Equal(t, "O1:split:*:M9000", items[1].ID)
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

// itemIDs plans a completed order of merchant under r and returns the
// items' ids, sorted, each mapped to its destination and amount.
func itemIDs(t *testing.T, r *allocation.Rules, merchant string) ([]string, map[string]string) {
	t.Helper()
	items := r.OnCompleted(completedOrder(merchant, "102"))
	ids := make([]string, 0, len(items))
	what := make(map[string]string, len(items))
	for _, it := range items {
		ids = append(ids, it.ID)
		what[it.ID] = it.Destination + " " + it.Amount.String()
	}
	slices.Sort(ids)
	return ids, what
}

func parseRules(t *testing.T, body string) *allocation.Rules {
	t.Helper()
	r, err := allocation.ParseRules([]byte(body))
	require.NoError(t, err, body)
	return r
}

// Reordering the rules file must not change the ids of the items it plans:
// a rebuilt order would otherwise plan the same split under a new id, and
// pay it twice.
func TestItemIDsDoNotDependOnSplitOrder(t *testing.T) {
	derived := []string{
		`{"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"}`,
		`{"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"}`,
		`{"merchant_id": "M1001", "destination_account": "bitgo:3fa85f64-5717-4562-b3fc-2c963f66afa6", "share": "0.2", "description": "partner"}`,
	}
	withID := append(slices.Clone(derived),
		`{"id": "reseller", "merchant_id": "M1001", "destination_account": "M7000", "share": "0.01", "description": "reseller"}`)
	cases := []struct {
		name   string
		splits []string
		want   []string
	}{
		{"derived ids", derived, []string{
			"O1:split:*:M9000",
			"O1:split:M1001:bitgo:3fa85f64-5717-4562-b3fc-2c963f66afa6",
			"O1:split:M1001:developer",
		}},
		{"with an explicit id", withID, []string{
			"O1:split:*:M9000",
			"O1:split:M1001:bitgo:3fa85f64-5717-4562-b3fc-2c963f66afa6",
			"O1:split:M1001:developer",
			"O1:split:reseller",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := func(order []int) string {
				parts := make([]string, 0, len(order))
				for _, i := range order {
					parts = append(parts, tc.splits[i])
				}
				return `{"splits": [` + strings.Join(parts, ",") + `]}`
			}
			inFileOrder := make([]int, len(tc.splits))
			for i := range inFileOrder {
				inFileOrder[i] = i
			}
			original := parseRules(t, file(inFileOrder))
			ids, _ := itemIDs(t, original, "M1001")
			require.Equal(t, tc.want, ids)
			for _, merchant := range []string{"M1001", "M2"} {
				wantIDs, want := itemIDs(t, original, merchant)
				require.NotEmpty(t, wantIDs)
				for range 5 {
					order := slices.Clone(inFileOrder)
					rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
					ids, got := itemIDs(t, parseRules(t, file(order)), merchant)
					require.Equal(t, wantIDs, ids, "merchant %s, splits in order %v", merchant, order)
					require.Equal(t, want, got, "merchant %s, splits in order %v", merchant, order)
				}
				reversed := slices.Clone(inFileOrder)
				slices.Reverse(reversed)
				ids, got := itemIDs(t, parseRules(t, file(reversed)), merchant)
				require.Equal(t, wantIDs, ids, "merchant %s, splits reversed", merchant)
				require.Equal(t, want, got, "merchant %s, splits reversed", merchant)
			}
		})
	}
}

// A rules file written before split ids existed parses as it did, and its
// items get ids from (merchant_id, destination_account).
func TestRulesFileWithoutIDs(t *testing.T) {
	r := parseRules(t, exampleRules)
	for _, s := range r.Splits {
		require.Nil(t, s.ID)
	}
	ids, _ := itemIDs(t, r, "M1001")
	require.Equal(t, []string{"O1:split:*:M9000", "O1:split:M1001:developer"}, ids)
}

// The derived id cannot be confused when merchant ids or destinations
// hold ':': the merchant id's ':' and '%' are escaped.
func TestDerivedItemIDsAreUnambiguous(t *testing.T) {
	r := parseRules(t, `{"splits":[
		{"merchant_id":"*","destination_account":"x:y","share":"0.1"},
		{"merchant_id":"*:x","destination_account":"y","share":"0.1"},
		{"merchant_id":"*%3Ax","destination_account":"y","share":"0.1"}]}`)
	ids, _ := itemIDs(t, r, "*:x")
	require.Equal(t, []string{"O1:split:*%3Ax:y", "O1:split:*:x:y"}, ids)
	ids, _ = itemIDs(t, r, "*%3Ax")
	require.Equal(t, []string{"O1:split:*%253Ax:y", "O1:split:*:x:y"}, ids)
}

func TestParseRulesRefusesDuplicatePairs(t *testing.T) {
	cases := map[string]string{
		`{"splits":[
			{"merchant_id":"M1001","destination_account":"developer","share":"0.1"},
			{"merchant_id":"*","destination_account":"M9000","share":"0.05"},
			{"merchant_id":"M1001","destination_account":"developer","share":"0.2"}]}`: `splits[2]: same merchant_id "M1001" and destination_account "developer" as splits[0]`,
		// Distinct explicit ids do not make a second split on the same pair acceptable.
		`{"splits":[
			{"id":"a","merchant_id":"*","destination_account":"M9000","share":"0.05"},
			{"id":"b","merchant_id":"*","destination_account":"M9000","share":"0.05"}]}`: `splits[1]: same merchant_id "*" and destination_account "M9000" as splits[0]`,
	}
	for body, want := range cases {
		_, err := allocation.ParseRules([]byte(body))
		require.EqualError(t, err, want, body)
	}
	// The same destination for a merchant and for "*" are two pairs.
	r := parseRules(t, `{"splits":[
		{"merchant_id":"M1001","destination_account":"developer","share":"0.1"},
		{"merchant_id":"*","destination_account":"developer","share":"0.05"}]}`)
	ids, _ := itemIDs(t, r, "M1001")
	require.Equal(t, []string{"O1:split:*:developer", "O1:split:M1001:developer"}, ids)
}

func TestSplitIDs(t *testing.T) {
	r := parseRules(t, `{"splits":[
		{"id":"commission","merchant_id":"M1001","destination_account":"developer","share":"0.1","description":"platform commission"},
		{"id":null,"merchant_id":"*","destination_account":"M9000","share":"0.05","description":"referral"},
		{"id":"Partner_2.v-1","merchant_id":"*","destination_account":"M8000","share":"0.05"}]}`)
	require.Equal(t, "commission", *r.Splits[0].ID)
	require.Nil(t, r.Splits[1].ID, "a null id is no id")
	ids, what := itemIDs(t, r, "M1001")
	require.Equal(t, []string{"O1:split:*:M9000", "O1:split:Partner_2.v-1", "O1:split:commission"}, ids)
	require.Equal(t, "developer 10", what["O1:split:commission"])

	split := func(id string) string {
		return fmt.Sprintf(`{"splits":[{"id":%s,"merchant_id":"M1","destination_account":"d","share":"0.1"}]}`, id)
	}
	bad := map[string]string{
		split(`""`):      `splits[0].id: must not be empty`,
		split(`"a:b"`):   `splits[0].id: "a:b" may hold only letters, digits`,
		split(`"a b"`):   `splits[0].id: "a b" may hold only`,
		split(`"../x"`):  `splits[0].id: "../x" may hold only`,
		split(`"commé"`): `splits[0].id: "commé" may hold only`,
		split(`"a%3Ab"`): `splits[0].id: "a%3Ab" may hold only`,
		split(`"*"`):     `splits[0].id: "*" may hold only`,
		split(`5`):       `decode`,
		split(`"` + strings.Repeat("x", allocation.MaxSplitIDLength+1) + `"`): `splits[0].id: longer than 64 characters`,
		`{"splits":[{"id":"c","merchant_id":"M1","destination_account":"a","share":"0.1"},` +
			`{"merchant_id":"M2","destination_account":"b","share":"0.1"},` +
			`{"id":"c","merchant_id":"M3","destination_account":"c","share":"0.1"}]}`: `splits[2].id: "c" already used by splits[0]`,
	}
	for body, want := range bad {
		_, err := allocation.ParseRules([]byte(body))
		require.ErrorContains(t, err, want, body)
	}
	_, err := allocation.ParseRules([]byte(split(`"` + strings.Repeat("x", allocation.MaxSplitIDLength) + `"`)))
	require.NoError(t, err)
}

// TestInvalidItemsAreFailedWhenPlanned: an item that the provider would
// refuse, and that would sink the batch it joins, is failed with its
// reason when planned and so never sent.
func TestInvalidItemsAreFailedWhenPlanned(t *testing.T) {
	r := parseRules(t, `{"splits":[
		{"merchant_id":"*","destination_account":"M9000","share":"0.05","description":"referral"},
		{"merchant_id":"*","destination_account":"developer","share":"0.10","description":"commission"}],
		"late_payments":"credit_merchant"}`)

	// M9000's own order: the referral would move M9000's funds to M9000.
	items := r.OnCompleted(completedOrder("M9000", "102"))
	require.Len(t, items, 2)
	for _, it := range items {
		if it.Destination == "M9000" {
			require.Equal(t, domain.AllocFailed, it.Status)
			require.Contains(t, it.Reason, "a transfer to itself")
		} else {
			require.Equal(t, domain.AllocPlanned, it.Status, "the other split of the order is unaffected")
		}
	}

	// A late payment to a merchant named like the developer account.
	late := r.OnLatePayment(completedOrder("developer", "102"), domain.LatePayment{TransactionID: "t", Amount: decimal.NewFromInt(1), TokenID: "ETH_USDT"})
	require.Equal(t, domain.AllocFailed, late[0].Status)
	require.Contains(t, late[0].Reason, "a transfer to itself")
	late = r.OnLatePayment(completedOrder("M1", "102"), domain.LatePayment{TransactionID: "t", Amount: decimal.Zero, TokenID: "ETH_USDT"})
	require.Equal(t, domain.AllocFailed, late[0].Status)
	require.Contains(t, late[0].Reason, "not positive")
	// Late credits keep their exact amount, however many decimals.
	late = r.OnLatePayment(completedOrder("M1", "102"), domain.LatePayment{TransactionID: "t", Amount: decimal.RequireFromString("0.123456789"), TokenID: "ETH_USDT"})
	require.Equal(t, domain.AllocPlanned, late[0].Status)
}
