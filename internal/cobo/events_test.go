package cobo_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

var errorsIs = errors.Is

func TestParseEnvelope(t *testing.T) {
	t.Parallel()
	env, err := cobo.ParseEnvelope([]byte(`  {"event_id":"e-1","type":"payment.transaction.late","created_timestamp":"1700000000000","data":{"data_type":"PaymentTransaction","order_id":"O1","x":[1,2]},"extra":true}`))
	require.NoError(t, err)
	require.Equal(t, "e-1", env.EventID)
	require.Equal(t, "payment.transaction.late", env.Type)
	require.Equal(t, "PaymentTransaction", env.DataType)
	require.Equal(t, "O1", env.OrderID)
	require.EqualValues(t, 1700000000000, env.CreatedTimestamp)

	bad := map[string]string{
		"empty":            ``,
		"not json":         `hello`,
		"array":            `[1]`,
		"truncated":        `{"event_id":"e"`,
		"no event_id":      `{"type":"t","data":{}}`,
		"empty event_id":   `{"event_id":"","type":"t","data":{}}`,
		"numeric event_id": `{"event_id":5,"type":"t","data":{}}`,
		"no type":          `{"event_id":"e","data":{}}`,
		"no data":          `{"event_id":"e","type":"t"}`,
		"null data":        `{"event_id":"e","type":"t","data":null}`,
		"string data":      `{"event_id":"e","type":"t","data":"x"}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := cobo.ParseEnvelope([]byte(body))
			require.ErrorIs(t, err, cobo.ErrMalformedEvent)
		})
	}
	// A non-string order_id is tolerated: the event is stored, without an order.
	env, err = cobo.ParseEnvelope([]byte(`{"event_id":"e","type":"t","data":{"order_id":12}}`))
	require.NoError(t, err)
	require.Empty(t, env.OrderID)
}

func TestAmountNeverUsesFloat(t *testing.T) {
	t.Parallel()
	var v struct {
		A cobo.Amount `json:"a"`
		B cobo.Amount `json:"b"`
		C cobo.Amount `json:"c"`
		D cobo.Amount `json:"d"`
		E cobo.Amount `json:"e"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{"a":"0.1000000000000000000000001","b":12345678901234567890.123456789,"c":null,"d":""}`), &v))
	require.Equal(t, "0.1000000000000000000000001", v.A.Decimal.String())
	require.Equal(t, "12345678901234567890.123456789", v.B.Decimal.String())
	require.False(t, v.C.Valid)
	require.False(t, v.D.Valid)
	require.False(t, v.E.Valid)
	require.Error(t, json.Unmarshal([]byte(`{"a":"1e"}`), &v))
	out, err := json.Marshal(v.A)
	require.NoError(t, err)
	require.Equal(t, `"0.1000000000000000000000001"`, string(out))
}

// decodeAmount decodes field "a" of {"a": raw}, as a payload decoder does.
func decodeAmount(t *testing.T, raw string) (cobo.Amount, error) {
	t.Helper()
	var v struct {
		A cobo.Amount `json:"a"`
	}
	err := json.Unmarshal([]byte(`{"a":`+raw+`}`), &v)
	return v.A, err
}

func TestAmountAcceptsPlainDecimals(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		`"102.5"`:        "102.5",
		`102.5`:          "102.5",
		`"0"`:            "0",
		`0`:              "0",
		`"0.000000"`:     "0",
		`"102"`:          "102",
		`102`:            "102",
		`"0.000001"`:     "0.000001",
		`"000102.50"`:    "102.5",
		`"\u0031\u0030"`: "10",
		// Exactly MaxAmountDigits significant digits, and decimals.
		`"123456789012345678901234567890123456"`:   "123456789012345678901234567890123456",
		`123456789012345678901234567890123456`:     "123456789012345678901234567890123456",
		`"12345678901234567890.1234567890123456"`:  "12345678901234567890.1234567890123456",
		`"0.000000000000000000000000000000000001"`: "0.000000000000000000000000000000000001",
		`"100000000000000000000000000000000000"`:   "100000000000000000000000000000000000",
	}
	for raw, want := range cases {
		t.Run(raw, func(t *testing.T) {
			a, err := decodeAmount(t, raw)
			require.NoError(t, err)
			require.True(t, a.Valid)
			require.Equal(t, want, a.Decimal.String())
		})
	}
	for _, raw := range []string{`null`, `""`, ` null `} {
		a, err := decodeAmount(t, raw)
		require.NoError(t, err, raw)
		require.False(t, a.Valid, raw)
	}
	var absent struct {
		A cobo.Amount `json:"a"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{}`), &absent))
	require.False(t, absent.A.Valid)
}

func TestAmountRefusesWhatIsNotAPlainDecimal(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		// Negative, in every spelling.
		`"-5"`:     "negative",
		`-5`:       "negative",
		`"-0"`:     "negative",
		`-0.0`:     "negative",
		`"-1e-18"`: "negative",
		`"-Inf"`:   "negative",
		// U+2212 written as UTF-8, then as a JSON escape.
		`"−5"`:      "Unicode minus sign U+2212",
		`"\u22125"`: "Unicode minus sign U+2212",
		`"+5"`:      "leading '+'",
		`"+Inf"`:    "leading '+'",
		// Exponent notation, as strings and as JSON numbers.
		`"1e400"`:   "exponent notation",
		`1e400`:     "exponent notation",
		`"1E2"`:     "exponent notation",
		`1E2`:       "exponent notation",
		`"1e-3"`:    "exponent notation",
		`1.5e3`:     "exponent notation",
		`"2.5E+10"`: "exponent notation",
		// Whitespace inside the string.
		`" 102"`:     "whitespace",
		`"102 "`:     "whitespace",
		`"1 000"`:    "whitespace",
		`"1\t0"`:     "whitespace",
		`"1\u00a00"`: "whitespace",
		`"1\u20030"`: "whitespace",
		`"\n1"`:      "whitespace",
		// Not numbers, hex.
		`"NaN"`:      "not a number",
		`"nan"`:      "not a number",
		`"Inf"`:      "not a number",
		`"Infinity"`: "not a number",
		`"0x10"`:     "hex notation",
		`"0X1F"`:     "hex notation",
		// Too many digits.
		`"123456789012345678901234567890123456.7"`:        "37 significant digits, more than 36",
		`123456789012345678901234567890123456.7`:          "37 significant digits, more than 36",
		`"1000000000000000000000000000000000000"`:         "37 significant digits, more than 36",
		`"0.0000000000000000000000000000000000001"`:       "37 digits after the decimal point, more than 36",
		`"99999999999999999999999999.000000000000000001"`: "44 significant digits",
		// Anything else that is not digits with an optional fraction.
		`"1.2.3"`:  "unexpected '.' at byte 3",
		`"1."`:     "no digit after '.'",
		`".5"`:     "no digit before '.'",
		`"1,5"`:    "unexpected ','",
		`"abc"`:    "unexpected 'a'",
		`"null"`:   "unexpected 'n'",
		`"\u0661"`: "unexpected '١'",
		`"1e"`:     "exponent notation",
		`{}`:       "unexpected '{'",
		`true`:     "unexpected 't'",
		`[1]`:      "unexpected '['",
	}
	for raw, want := range cases {
		t.Run(raw, func(t *testing.T) {
			a, err := decodeAmount(t, raw)
			require.ErrorIs(t, err, cobo.ErrInvalidAmount)
			require.ErrorContains(t, err, want)
			require.False(t, a.Valid)
		})
	}
}

// A refused amount is named in the error, but never echoed whole.
func TestAmountErrorsDoNotEchoHugeInputs(t *testing.T) {
	t.Parallel()
	for _, huge := range []string{
		strings.Repeat("9", 100000),
		"1e" + strings.Repeat("4", 100000),
		"0." + strings.Repeat("0", 100000) + "1",
		strings.Repeat("\u2212", 1000),
		"\u2212" + strings.Repeat("9", 100000),
	} {
		_, err := decodeAmount(t, strconv.Quote(huge))
		require.ErrorIs(t, err, cobo.ErrInvalidAmount)
		require.Less(t, len(err.Error()), 160, err.Error())
		require.Contains(t, err.Error(), fmt.Sprintf("(%d bytes)", len(huge)))
		require.True(t, utf8.ValidString(err.Error()), "the echo is cut on a rune boundary")
	}
}

func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte(`{"event_id":"e","type":"payment.order.status.updated","data":{"order_id":"O1","data_type":"PaymentOrder"}}`))
	f.Add([]byte(`{"event_id":"e","type":"t","data":{"order_id":1}}`))
	f.Add([]byte(`{"event_id":"","type":"t","data":{}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"event_id":"e","type":"t","data":{},"created_timestamp":"x"}`))
	f.Add([]byte("{\"event_id\":\"\xff\",\"type\":\"t\",\"data\":{}}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := cobo.ParseEnvelope(body)
		if err != nil {
			require.ErrorIs(t, err, cobo.ErrMalformedEvent)
			return
		}
		require.NotEmpty(t, env.EventID)
		require.NotEmpty(t, env.Type)
		require.True(t, utf8.ValidString(env.EventID))
		require.Equal(t, byte('{'), env.Data[0])
		// Every payload decoder must accept or reject the data without panicking.
		var o cobo.OrderData
		_ = json.Unmarshal(env.Data, &o)
		var u cobo.OrderUpdateData
		_ = json.Unmarshal(env.Data, &u)
		var tx cobo.TransactionData
		_ = json.Unmarshal(env.Data, &tx)
		_ = tx.DestinationAmount()
	})
}

func TestInt64Time(t *testing.T) {
	t.Parallel()
	require.True(t, cobo.Int64(0).Time().IsZero())
	require.True(t, cobo.Int64(-5).Time().IsZero())
	require.Equal(t, time.Unix(1700000000, 0), cobo.Int64(1700000000).Time(), "seconds, as documented")
	require.Equal(t, time.UnixMilli(1700000500123), cobo.Int64(1700000500123).Time(), "milliseconds, as Cobo sends some")
}
