package cobo_test

import (
	"encoding/json"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

// plainDecimal is the wire form of every amount paystream writes back.
var plainDecimal = regexp.MustCompile(`^"[0-9]+(\.[0-9]+)?"$`)

// FuzzAmount: any bytes either fail to decode or give an amount that
// survives a round trip unchanged, so no amount is altered on its way
// from the wire to the wire. An accepted amount is non-negative, with at
// most MaxAmountDigits significant digits and decimals.
func FuzzAmount(f *testing.F) {
	for _, seed := range []string{
		`"102.000001"`, `102.5`, `"0"`, `null`, `""`, `"-1e-18"`, `"1e400"`, `"abc"`, `"1.2.3"`, `{}`,
		`"99999999999999999999999999.000000000000000001"`, `"0.000000"`, `"000102.50"`, `-0`, `1E2`, `"+1"`,
		`"−5"`, `"\u22125"`, `" 1"`, `"1\u00a0"`, `"NaN"`, `"Inf"`, `"0x10"`, `"\u0031"`,
		`"123456789012345678901234567890123456"`, `"123456789012345678901234567890123456.7"`,
		`"0.000000000000000000000000000000000001"`, `"0.0000000000000000000000000000000000001"`,
	} {
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
		if !a.Valid {
			return
		}
		require.True(t, a.Decimal.Equal(back.Decimal), "%s -> %s", b, out)
		require.False(t, a.Decimal.IsNegative(), "%s", b)
		require.LessOrEqual(t, len(a.Decimal.Coefficient().String()), cobo.MaxAmountDigits, "%s", b)
		require.LessOrEqual(t, -a.Decimal.Exponent(), int32(cobo.MaxAmountDigits), "%s", b)
		require.LessOrEqual(t, a.Decimal.Exponent(), int32(0), "%s", b)
		require.Regexp(t, plainDecimal, string(out))
	})
}
