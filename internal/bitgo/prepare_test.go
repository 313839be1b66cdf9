package bitgo

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"
)

const (
	testConnection = "11111111-2222-4333-8444-555555555555"
	testEnterprise = "0123456789abcdef0123456789abcdef"
	fixedNonce     = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

// newFixedNonceClient returns a Client whose nonces are fixedNonce.
func newFixedNonceClient(t *testing.T) *Client {
	t.Helper()
	key, err := ParseSigningKey(vector1Xprv)
	require.NoError(t, err)
	c, err := New(Config{
		BaseURL:      "http://127.0.0.1:1",
		EnterpriseID: testEnterprise,
		AccessToken:  "v2xtesttoken",
		SigningKey:   key,
		Currencies:   DefaultCurrencies(),
	})
	require.NoError(t, err)
	c.nonce = func() (string, error) { return fixedNonce, nil }
	return c
}

func TestPrepareExactPayload(t *testing.T) {
	t.Parallel()
	c := newFixedNonceClient(t)
	r, err := c.Prepare(testConnection, "pay-1", "ETH_USDT", decimal.RequireFromString("12.5"), "order <42> & co")
	require.NoError(t, err)
	require.Equal(t, testConnection, r.ConnectionID)
	require.Equal(t, "pay-1", r.ClientExternalID)

	wantPayload := `{"connectionId":"11111111-2222-4333-8444-555555555555","amount":{"currency":"ofcusdt","quantity":"12500000"},"notes":"order <42> & co","clientExternalId":"pay-1","nonce":"` + fixedNonce + `"}`
	var body map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &body))
	require.Equal(t, wantPayload, body["payload"])
	require.Equal(t, map[string]any{"currency": "ofcusdt", "quantity": "12500000"}, body["amount"])
	require.Equal(t, "pay-1", body["clientExternalId"])
	require.Equal(t, fixedNonce, body["nonce"])
	require.Equal(t, "order <42> & co", body["notes"])
	require.Len(t, body, 6)
	require.NoError(t, VerifyMessage(c.cfg.SigningKey.PubKey(), []byte(wantPayload), body["signature"].(string)))

	// The body is compact, in schema order, and not HTML-escaped either.
	wantBody := `{"amount":{"currency":"ofcusdt","quantity":"12500000"},"clientExternalId":"pay-1","nonce":"` + fixedNonce +
		`","notes":"order <42> & co","payload":` + mustJSONString(t, wantPayload) + `,"signature":"` + body["signature"].(string) + `"}`
	require.Equal(t, wantBody, string(r.Body))
	require.NotContains(t, string(r.Body), `\u003c`)
	require.NotContains(t, string(r.Body), `\u0026`)

	// Signatures are deterministic, so the same inputs give the same bytes.
	again, err := c.Prepare(testConnection, "pay-1", "ETH_USDT", decimal.RequireFromString("12.500"), "order <42> & co")
	require.NoError(t, err)
	require.Equal(t, string(r.Body), string(again.Body))
}

func mustJSONString(t *testing.T, s string) string {
	t.Helper()
	b, err := marshalCompact(s)
	require.NoError(t, err)
	return string(b)
}

func TestPrepareWithoutNotes(t *testing.T) {
	t.Parallel()
	c := newFixedNonceClient(t)
	r, err := c.Prepare(testConnection, "pay-2", "TRON_USDT", decimal.RequireFromString("1"), "")
	require.NoError(t, err)
	var body map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &body))
	require.NotContains(t, body, "notes")
	require.Equal(t, `{"connectionId":"11111111-2222-4333-8444-555555555555","amount":{"currency":"ofctrx:usdt","quantity":"1000000"},"clientExternalId":"pay-2","nonce":"`+fixedNonce+`"}`, body["payload"])
}

func TestPrepareQuantity(t *testing.T) {
	t.Parallel()
	c := newFixedNonceClient(t)
	cases := []struct{ token, amount, want string }{
		{"ETH_USDT", "12.5", "12500000"},
		{"ETH_USDT", "0.000001", "1"},
		{"ETH_USDT", "1.0000000", "1000000"}, // trailing zeros beyond the precision are fine
		{"ETH_USDC", "1000000", "1000000000000"},
		{"BSC_USDT", "1.5", "1500000000000000000"},
		{"BSC_USDC", "0.000000000000000001", "1"},
		{"BSC_USDT", "123456789.123456789123456789", "123456789123456789123456789"},
	}
	for _, tc := range cases {
		r, err := c.Prepare(testConnection, "q", tc.token, decimal.RequireFromString(tc.amount), "")
		require.NoError(t, err, "%s %s", tc.token, tc.amount)
		var body struct{ Amount Amount }
		require.NoError(t, json.Unmarshal(r.Body, &body))
		require.Equal(t, tc.want, body.Amount.Quantity, "%s %s", tc.token, tc.amount)
	}
}

func TestPrepareRejects(t *testing.T) {
	t.Parallel()
	c := newFixedNonceClient(t)
	cases := []struct {
		name, conn, ext, token, amount, notes, errHas string
	}{
		{"too many decimals", testConnection, "x", "ETH_USDT", "0.0000001", "", "more than 6 decimals"},
		{"too many decimals 18", testConnection, "x", "BSC_USDT", "1.0000000000000000001", "", "more than 18 decimals"},
		{"zero", testConnection, "x", "ETH_USDT", "0", "", "not positive"},
		{"negative", testConnection, "x", "ETH_USDT", "-1", "", "not positive"},
		{"unknown token", testConnection, "x", "DOGE_DOGE", "1", "", `"DOGE_DOGE"`},
		{"empty connection", "", "x", "ETH_USDT", "1", "", "connectionId is empty"},
		{"empty external id", testConnection, "", "ETH_USDT", "1", "", "clientExternalId is empty"},
		{"non-ascii notes", testConnection, "x", "ETH_USDT", "1", "café", "notes has a byte"},
		{"control char", testConnection, "x\n", "ETH_USDT", "1", "", "clientExternalId has a byte"},
		{"long notes", testConnection, "x", "ETH_USDT", "1", strings.Repeat("n", maxField+1), "notes has"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Prepare(tc.conn, tc.ext, tc.token, decimal.RequireFromString(tc.amount), tc.notes)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.errHas)
			require.Contains(t, err.Error(), "bitgo prepare")
		})
	}
}

func TestRandomNonce(t *testing.T) {
	t.Parallel()
	a, err := randomNonce()
	require.NoError(t, err)
	b, err := randomNonce()
	require.NoError(t, err)
	require.Len(t, a, 64)
	require.True(t, isHexString(a))
	require.NotEqual(t, a, b)
}

func TestRequestNonceAndSameAllocation(t *testing.T) {
	t.Parallel()
	c := newFixedNonceClient(t)
	first, err := c.Prepare(testConnection, "pay-1", "ETH_USDT", decimal.RequireFromString("12.5"), "n")
	require.NoError(t, err)
	require.Equal(t, fixedNonce, first.Nonce())

	c.nonce = randomNonce
	fresh, err := c.Prepare(testConnection, "pay-1", "ETH_USDT", decimal.RequireFromString("12.50"), "n")
	require.NoError(t, err)
	require.NotEqual(t, first.Nonce(), fresh.Nonce())
	require.Len(t, fresh.Nonce(), 64)
	require.True(t, first.SameAllocation(fresh), "a new nonce and signature, the same allocation")
	require.True(t, fresh.SameAllocation(first))

	for name, args := range map[string]struct {
		conn, ext, amount, notes string
	}{
		"connection":  {"other-connection", "pay-1", "12.5", "n"},
		"external id": {testConnection, "pay-2", "12.5", "n"},
		"amount":      {testConnection, "pay-1", "12.500001", "n"},
		"notes":       {testConnection, "pay-1", "12.5", "m"},
		"no notes":    {testConnection, "pay-1", "12.5", ""},
	} {
		other, err := c.Prepare(args.conn, args.ext, "ETH_USDT", decimal.RequireFromString(args.amount), args.notes)
		require.NoError(t, err)
		require.False(t, first.SameAllocation(other), name)
	}
	require.False(t, first.SameAllocation(Request{ConnectionID: testConnection, ClientExternalID: "pay-1", Body: []byte("{")}))
	require.Empty(t, Request{Body: []byte("{")}.Nonce())
}
