package allocation

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// TestRefuseInvalid covers the rules SplitAmount itself never breaks
// (it rounds down to AmountDecimals and never exceeds what was received),
// kept as a second line should the formula change.
func TestRefuseInvalid(t *testing.T) {
	received := decimal.NewNullDecimal(decimal.RequireFromString("102"))
	cases := []struct {
		kind, amount, reason string
	}{
		{domain.KindSplit, "10.1234567", "more than 6 decimals"},
		{domain.KindSplit, "102.000001", "more than the order received"},
		{domain.KindSplit, "-1", "not positive"},
		{domain.KindSplit, "10.123456", ""},
		{domain.KindLate, "10.1234567", ""},
		{domain.KindLate, "500", ""},
	}
	for _, c := range cases {
		it := domain.AllocationItem{Kind: c.kind, Amount: decimal.RequireFromString(c.amount), Source: "M1", Destination: "developer", Status: domain.AllocPlanned}
		refuseInvalid(&it, received)
		if c.reason == "" {
			require.Equal(t, domain.AllocPlanned, it.Status, "%s %s", c.kind, c.amount)
			continue
		}
		require.Equal(t, domain.AllocFailed, it.Status, "%s %s", c.kind, c.amount)
		require.Contains(t, it.Reason, c.reason)
	}
}
