// Package orderref tells which order ids a free-text allocation
// description names. The simulators use it to find allocations made for
// particular orders (the sandbox's foreign orders) from what clients sent:
// paystream's allocation descriptions and BitGo notes end with, or contain,
// the order id ("referral O20260315-M1001-123450001", "late payment <tx>
// for order O20260315-M1001-123450001").
package orderref

// Set is a set of order ids. The zero value is an empty set.
type Set map[string]struct{}

// NewSet returns the set of ids; empty ids are left out, as they name
// nothing.
func NewSet(ids ...string) Set {
	s := make(Set, len(ids))
	for _, id := range ids {
		if id != "" {
			s[id] = struct{}{}
		}
	}
	return s
}

// Named returns the first id of s that text names, and whether there is
// one. An id is named when it appears in text as a whole token: a maximal
// run of ASCII letters, digits, '-' and '_' (the characters of Cobo's
// order ids). So "order O-1," names O-1, but "O-10" and "xO-1" do not.
func (s Set) Named(text string) (string, bool) {
	if len(s) == 0 {
		return "", false
	}
	start := -1
	for i := 0; i <= len(text); i++ {
		if i < len(text) && isIDByte(text[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			if _, ok := s[text[start:i]]; ok {
				return text[start:i], true
			}
			start = -1
		}
	}
	return "", false
}

func isIDByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
