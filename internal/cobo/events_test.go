package cobo_test

import (
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

var errorsIs = errors.Is

func TestParseEnvelope(t *testing.T) {
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
