package cobo

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNonEmptyStringDecodesAsJSONDoes: the shortcut for plain ids gives
// what json.Unmarshal gives, for every kind of JSON string value.
func TestNonEmptyStringDecodesAsJSONDoes(t *testing.T) {
	for _, raw := range []string{
		`"evt-1"`, `"O_1-2"`, `""`, `" "`, `"a\"b"`, `"a\\b"`, `"\u0041"`, `"é"`, `"\ud83d\ude00"`,
		"\"\xff\"", `"tab\t"`, `"a/b"`, `null`, `1`, `{}`, `true`,
	} {
		got, ok := nonEmptyString(json.RawMessage(raw))
		var want string
		wantOK := raw[0] == '"' && json.Unmarshal([]byte(raw), &want) == nil && want != ""
		require.Equal(t, wantOK, ok, raw)
		if ok {
			require.Equal(t, want, got, raw)
		}
	}
}

func FuzzNonEmptyString(f *testing.F) {
	for _, s := range []string{`"evt-1"`, `"a\"b"`, `"\u0041"`, `""`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		// nonEmptyString is given one JSON value, as RawMessage holds it.
		if !json.Valid(raw) || len(bytes.TrimSpace(raw)) != len(raw) {
			return
		}
		got, ok := nonEmptyString(raw)
		var want string
		wantOK := raw[0] == '"' && json.Unmarshal(raw, &want) == nil && want != ""
		if ok != wantOK || got != want && ok {
			t.Fatalf("%q: got %q %v, json.Unmarshal %q %v", raw, got, ok, want, wantOK)
		}
	})
}

func TestWebhookDigestIsDigestOfTheMessage(t *testing.T) {
	for _, body := range []string{"", "{}", `{"event_id":"e","data":{}}`} {
		require.Equal(t, Digest(WebhookMessage([]byte(body), "1700000000000")), webhookDigest([]byte(body), "1700000000000"), body)
	}
}

// dataSeeds are bodies of every type ParseEnvelopeData decodes, and some
// it must leave to the routing fields.
var dataSeeds = []string{
	`{"event_id":"e1","created_timestamp":1700000001000,"type":"payment.order.status.updated","data":{"data_type":"PaymentOrder","order_id":"O1","merchant_id":"M1","pricing_amount":"100.00","status":"Completed","received_token_amount":"102.000001","transactions":[{"tx_id":"t","amount":"1"}]}}`,
	`{"event_id":"e2","type":"payment.status.updated","data":{"order_id":"O\u0031","Order_ID":"O2"}}`,
	`{"event_id":"e3","type":"payment.order.updated","data":{"data_type":"PaymentOrderUpdate","order_id":"O3","status":"Completed","transactions":[{"transaction_id":"t","is_late":true,"amount":{"amount":"5.1","token_id":"X"}}]}}`,
	`{"event_id":"e4","type":"payment.transaction.late","data":{"transaction_id":"t","order_id":"O4","destination":{"amount":"5"}}}`,
	`{"event_id":"e5","type":"payment.transaction.completed","data":{"transaction_id":"t","order_id":null}}`,
	`{"event_id":"e6","type":"payment.order.status.updated","data":{"order_id":17,"data_type":"PaymentOrder"}}`,
	`{"event_id":"e7","type":"payment.order.status.updated","data":{"order_id":"O7","pricing_amount":"-1"}}`,
	`{"event_id":"e8","type":"payment.refund.updated","data":{"order_id":"O8"}}`,
	`{"event_id":"e9","type":"payment.order.updated","data":{"order_id":"O9","order_id":"O9b"}}`,
}

// TestParseEnvelopeDataIsParseEnvelopeAndTheReadersDecode: the envelope
// is ParseEnvelope's, and what it decoded is what decoding Data gives.
func TestParseEnvelopeDataIsParseEnvelopeAndTheReadersDecode(t *testing.T) {
	decodedSome := 0
	for _, body := range dataSeeds {
		if sameAsParseEnvelope(t, []byte(body)) {
			decodedSome++
		}
	}
	require.Equal(t, 6, decodedSome, "every type it knows, when its data decodes")
}

func FuzzParseEnvelopeData(f *testing.F) {
	for _, s := range dataSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { sameAsParseEnvelope(t, body) })
}

// sameAsParseEnvelope checks ParseEnvelopeData(body) against ParseEnvelope
// and the reader's own decode; it reports whether data came decoded.
func sameAsParseEnvelope(t *testing.T, body []byte) bool {
	t.Helper()
	want, wantErr := ParseEnvelope(body)
	got, decoded, err := ParseEnvelopeData(body)
	if wantErr != nil {
		require.EqualError(t, err, wantErr.Error())
		require.Nil(t, decoded)
		return false
	}
	require.NoError(t, err)
	require.Equal(t, want, got, "%s", body)
	if decoded == nil {
		if v := dataFor(got.Type); v != nil {
			require.Error(t, json.Unmarshal(got.Data, v), "left undecoded although it decodes: %s", body)
		}
		return false
	}
	fresh := dataFor(got.Type)
	require.NoError(t, json.Unmarshal(got.Data, fresh))
	require.Equal(t, fresh, decoded, "%s", body)
	return true
}
