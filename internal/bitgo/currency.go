package bitgo

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/shopspring/decimal"
)

// maxDecimals bounds Currency.Decimals. The largest BitGo coins use 24
// decimals; the margin only guards against typos such as "ofcusdt:600".
const maxDecimals = 40

// Currency maps a Cobo token id to BitGo's currency name and its decimals.
// Name is what BitGo expects in amount.currency (e.g. "ofcusdt",
// "ofctrx:usdt"); Decimals is the exponent of the base unit, so an amount is
// sent as amount*10^Decimals.
type Currency struct {
	Name     string
	Decimals int32
}

// validate reports what is wrong with c, if anything.
func (c Currency) validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("empty BitGo currency name")
	case !isCurrencyName(c.Name):
		return fmt.Errorf("BitGo currency name %q has characters other than letters, digits and ':._-'", c.Name)
	case c.Decimals < 0 || c.Decimals > maxDecimals:
		return fmt.Errorf("decimals %d of %s are not between 0 and %d", c.Decimals, c.Name, maxDecimals)
	}
	return nil
}

// quantity returns amount in base units as an integer string. The amount
// must be positive and have no more significant decimals than c allows:
// rounding would silently move money.
func (c Currency) quantity(amount decimal.Decimal) (string, error) {
	if !amount.IsPositive() {
		return "", fmt.Errorf("amount %s is not positive", amount)
	}
	q := amount.Shift(c.Decimals)
	if !q.IsInteger() {
		return "", fmt.Errorf("amount %s has more than %d decimals, the precision of %s", amount, c.Decimals, c.Name)
	}
	return q.BigInt().String(), nil
}

// ParseCurrencies parses a comma-separated list of TOKEN=NAME:DECIMALS
// entries, e.g. "ETH_USDT=ofcusdt:6,TRON_USDT=ofctrx:usdt:6". The LAST ':'
// of an entry separates the decimals, since BitGo names may contain ':'.
// Blanks around entries and parts are ignored. A blank string gives an
// empty map. An error names the bad entry (by position and text); a token
// listed twice is an error.
func ParseCurrencies(s string) (map[string]Currency, error) {
	out := map[string]Currency{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for i, raw := range strings.Split(s, ",") {
		entry := strings.TrimSpace(raw)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("currency entry %d %q: %s", i+1, entry, fmt.Sprintf(format, args...))
		}
		token, spec, ok := strings.Cut(entry, "=")
		token, spec = strings.TrimSpace(token), strings.TrimSpace(spec)
		if !ok || token == "" || spec == "" {
			return nil, bad("want TOKEN=NAME:DECIMALS")
		}
		if strings.ContainsAny(token, " \t=:") {
			return nil, bad("token id %q has blanks, '=' or ':'", token)
		}
		j := strings.LastIndexByte(spec, ':')
		if j < 0 {
			return nil, bad("missing :DECIMALS after the BitGo currency name")
		}
		name, decs := strings.TrimSpace(spec[:j]), strings.TrimSpace(spec[j+1:])
		d, err := strconv.ParseInt(decs, 10, 32)
		if err != nil {
			return nil, bad("decimals %q are not an integer", decs)
		}
		c := Currency{Name: name, Decimals: int32(d)}
		if err := c.validate(); err != nil {
			return nil, bad("%v", err)
		}
		if _, dup := out[token]; dup {
			return nil, bad("token id %s is listed twice", token)
		}
		out[token] = c
	}
	return out, nil
}

// DefaultCurrencies returns a fresh map from Cobo token ids to BitGo
// MAINNET Go Account (OFC) currencies, from BitGo's statics. Which
// identifier family (OFC or backing coin) the allocation endpoint expects,
// and which coins a partner supports, are not documented; check with
// GET /supportedCurrencies and override with ParseCurrencies, in particular
// on testnet, where names differ and Solana tokens have 9 decimals.
func DefaultCurrencies() map[string]Currency {
	return map[string]Currency{
		"ETH_USDT":  {Name: "ofcusdt", Decimals: 6},
		"ETH_USDC":  {Name: "ofcusdc", Decimals: 6},
		"TRON_USDT": {Name: "ofctrx:usdt", Decimals: 6},
		"SOL_USDC":  {Name: "ofcsol:usdc", Decimals: 6},
		"SOL_USDT":  {Name: "ofcsol:usdt", Decimals: 6},
		"BSC_USDT":  {Name: "ofcbsc:usdt", Decimals: 18},
		"BSC_USDC":  {Name: "ofcbsc:usdc", Decimals: 18},
		"ETH":       {Name: "ofceth", Decimals: 18},
		"BTC":       {Name: "ofcbtc", Decimals: 8},
	}
}

func isCurrencyName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == ':' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
