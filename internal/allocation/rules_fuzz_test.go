package allocation_test

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
)

// FuzzParseRules: a rules file either is refused with an error or parses
// into rules; it never panics, whatever an operator or an attacker wrote.
// Rules it accepts give every item of an order its own id, and the same
// ids whatever the order of the splits in the file.
func FuzzParseRules(f *testing.F) {
	for _, seed := range []string{
		exampleRules, `{}`, `{"splits":[]}`, `{"splits":[{"to":"M1","percent":"101"}]}`, `[`, `null`,
		`{"splits":[{"id":"commission","merchant_id":"M1","destination_account":"developer","share":"0.1"},{"merchant_id":"*","destination_account":"M9","share":"0.1"}]}`,
		`{"splits":[{"id":"","merchant_id":"M1","destination_account":"d","share":"0.1"}]}`,
		`{"splits":[{"id":"a:b","merchant_id":"M1","destination_account":"d","share":"0.1"}]}`,
		`{"splits":[{"id":null,"merchant_id":"M1","destination_account":"d","share":"0.1"}]}`,
		`{"splits":[{"id":"x","merchant_id":"M1","destination_account":"a","share":"0.1"},{"id":"x","merchant_id":"M1","destination_account":"b","share":"0.1"}]}`,
		`{"splits":[{"merchant_id":"M1","destination_account":"d","share":"0.1"},{"merchant_id":"M1","destination_account":"d","share":"0.1"}]}`,
		`{"splits":[{"merchant_id":"*","destination_account":"x:y","share":"0.1"},{"merchant_id":"*:x","destination_account":"y","share":"0.1"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := allocation.ParseRules(b)
		if err != nil {
			return
		}
		require.NotNil(t, r)
		reversed := &allocation.Rules{Splits: slices.Clone(r.Splits), LatePayments: r.LatePayments}
		slices.Reverse(reversed.Splits)
		for _, s := range r.Splits {
			ids, what := itemIDs(t, r, s.MerchantID)
			require.Len(t, what, len(ids), "two items of one order share an id: %v", ids)
			rids, rwhat := itemIDs(t, reversed, s.MerchantID)
			require.Equal(t, ids, rids)
			require.Equal(t, what, rwhat)
		}
	})
}
