package cobo_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

// FuzzAmount: any bytes either fail to decode or give an amount that
// survives a round trip unchanged, so no amount is altered on its way
// from the wire to the wire.
func FuzzAmount(f *testing.F) {
	for _, seed := range []string{`"102.000001"`, `102.5`, `"0"`, `null`, `""`, `"-1e-18"`, `"1e400"`, `"abc"`, `"1.2.3"`, `{}`, `"99999999999999999999999999.000000000000000001"`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var a cobo.Amount
		if err := json.Unmarshal(b, &a); err != nil {
			return
		}
		out, err := json.Marshal(a)
		require.NoError(t, err)
		var back cobo.Amount
		require.NoError(t, json.Unmarshal(out, &back), "%s", out)
		require.Equal(t, a.Valid, back.Valid)
		if a.Valid {
			require.True(t, a.Decimal.Equal(back.Decimal), "%s -> %s", b, out)
		}
	})
}
