package replay

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
)

func TestWriteLineEmbedsTheBodyExactlyOrLosslessly(t *testing.T) {
	type head struct {
		Seq uint64 `json:"seq"`
	}
	cases := []struct {
		name, body string
		verbatim   bool
		event      string
	}{
		{name: "compact", body: `{"a":"<&>","b":[1, 2]}`, verbatim: true},
		{name: "spaced", body: ` { "a" : "\u00e9" } `, verbatim: true},
		{name: "line breaks", body: "{\n  \"a\": 1\n}\n", event: `{"a":1}`},
		{name: "not json", body: "not json"},
		{name: "bad utf-8", body: "{\"a\":\"\xff\"}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, writeLine(&out, head{Seq: 7}, []byte(c.body)))
			line := out.Bytes()
			require.Equal(t, 1, bytes.Count(line, []byte("\n")), "one line")
			require.True(t, bytes.HasSuffix(line, []byte("}\n")))
			var fields map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(line, &fields), string(line))
			require.Equal(t, "7", string(fields["seq"]))
			if c.verbatim {
				require.Contains(t, string(line), `,"event":`+c.body+"}\n", "the body is in the line byte for byte")
				require.NotContains(t, fields, "body_base64")
				return
			}
			var b64 string
			require.NoError(t, json.Unmarshal(fields["body_base64"], &b64))
			raw, err := base64.StdEncoding.DecodeString(b64)
			require.NoError(t, err)
			require.Equal(t, c.body, string(raw))
			if c.event != "" {
				require.Equal(t, c.event, string(fields["event"]))
			}
		})
	}
}

func TestSelectionFilterIsTheEventSubjectFilter(t *testing.T) {
	order, typ := "O 1/odd", "payment.transaction.late"
	require.Equal(t, events.OrderFilter(order), Selection{OrderID: order}.filter(events.SubjectPrefix))
	require.Equal(t, events.TypeFilter(typ), Selection{Type: typ}.filter(events.SubjectPrefix))
	require.Equal(t, events.Subject(typ, order), Selection{OrderID: order, Type: typ}.filter(events.SubjectPrefix))
	require.Equal(t, events.SubjectPrefix+".>", Selection{}.filter(events.SubjectPrefix))
	require.Equal(t, events.DLQSubjectPrefix+".*."+events.Token(order), Selection{OrderID: order}.filter(events.DLQSubjectPrefix))
}
