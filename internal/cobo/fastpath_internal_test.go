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
