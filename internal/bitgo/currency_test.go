package bitgo

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseCurrenciesGood(t *testing.T) {
	t.Parallel()
	got, err := ParseCurrencies("ETH_USDT=ofcusdt:6, TRON_USDT = ofctrx:usdt:6 ,SOL_USDC=ofctsol:usdc:9,BSC_USDT=ofcbsc:usdt:18,BTC=ofcbtc:0")
	require.NoError(t, err)
	require.Equal(t, map[string]Currency{
		"ETH_USDT":  {Name: "ofcusdt", Decimals: 6},
		"TRON_USDT": {Name: "ofctrx:usdt", Decimals: 6},
		"SOL_USDC":  {Name: "ofctsol:usdc", Decimals: 9},
		"BSC_USDT":  {Name: "ofcbsc:usdt", Decimals: 18},
		"BTC":       {Name: "ofcbtc", Decimals: 0},
	}, got)

	empty, err := ParseCurrencies("  ")
	require.NoError(t, err)
	require.Empty(t, empty)
}

func TestParseCurrenciesBad(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, errHas string }{
		{"ETH_USDT", `entry 1 "ETH_USDT"`},
		{"ETH_USDT=ofcusdt:6,TRON_USDT=ofctrx:usdt", `entry 2 "TRON_USDT=ofctrx:usdt"`},
		{"ETH_USDT=ofcusdt", "missing :DECIMALS"},
		{"ETH_USDT=ofcusdt:six", `decimals "six"`},
		{"ETH_USDT=ofcusdt:-1", "not between"},
		{"ETH_USDT=ofcusdt:41", "not between"},
		{"ETH_USDT=:6", "empty BitGo currency name"},
		{"=ofcusdt:6", "want TOKEN=NAME:DECIMALS"},
		{"ETH_USDT=", "want TOKEN=NAME:DECIMALS"},
		{"ETH_USDT=ofcusdt:6,,BTC=ofcbtc:8", "entry 2"},
		{"ETH_USDT=ofcusdt:6,ETH_USDT=ofcusdc:6", "listed twice"},
		{"ETH USDT=ofcusdt:6", "blanks"},
		{"ETH_USDT=ofc usdt:6", "characters other than"},
		{"ETH_USDT=ofcusdt=x:6", "characters other than"},
	}
	for _, tc := range cases {
		_, err := ParseCurrencies(tc.in)
		require.Error(t, err, tc.in)
		require.Contains(t, err.Error(), tc.errHas, tc.in)
	}
}

func TestDefaultCurrencies(t *testing.T) {
	t.Parallel()
	d := DefaultCurrencies()
	for token, c := range d {
		require.NoError(t, c.validate(), token)
	}
	require.Equal(t, Currency{Name: "ofcusdt", Decimals: 6}, d["ETH_USDT"])
	require.Equal(t, Currency{Name: "ofctrx:usdt", Decimals: 6}, d["TRON_USDT"])
	require.Equal(t, int32(18), d["BSC_USDT"].Decimals)
	require.Equal(t, int32(18), d["BSC_USDC"].Decimals)

	// Each call returns a fresh map.
	d["ETH_USDT"] = Currency{Name: "changed"}
	require.Equal(t, "ofcusdt", DefaultCurrencies()["ETH_USDT"].Name)
}
