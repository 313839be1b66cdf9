package allocation_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
)

// FuzzParseRules: a rules file either is refused with an error or parses
// into rules; it never panics, whatever an operator or an attacker wrote.
func FuzzParseRules(f *testing.F) {
	for _, seed := range []string{exampleRules, `{}`, `{"splits":[]}`, `{"splits":[{"to":"M1","percent":"101"}]}`, `[`, `null`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := allocation.ParseRules(b)
		if err == nil {
			require.NotNil(t, r)
		}
	})
}
