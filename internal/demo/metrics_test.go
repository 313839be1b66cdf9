package demo

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestParseMetrics reads an exposition as client_golang writes it, with
// the text format's corners: escaped label values holding commas, braces
// and spaces, timestamps, histograms, untyped samples.
func TestParseMetrics(t *testing.T) {
	t.Parallel()
	m, err := parseMetrics(strings.NewReader(`# HELP paystream_worker_events_total Events handled, by type and result.
# TYPE paystream_worker_events_total counter
paystream_worker_events_total{result="ok",type="payment.order.status.updated"} 120
paystream_worker_events_total{result="dead_letter",type="payment.order.status.updated"} 3

paystream_worker_events_total{result="ok",type="payment.transaction.completed"} 7 1700000000000
odd_total{path="/a b,c}",quote="say \"hi\"",nl="x\ny",back="c:\\tmp"} 2.5
paystream_worker_handle_seconds_bucket{le="0.005"} 10
paystream_worker_handle_seconds_bucket{le="+Inf"} 12
paystream_worker_handle_seconds_sum 0.25
paystream_worker_handle_seconds_count 12
up 1
empty_labels{} 4
`))
	require.NoError(t, err)
	require.Equal(t, 130.0, m.sum("paystream_worker_events_total"))
	require.Equal(t, 127.0, m.sum("paystream_worker_events_total", "result", "ok"))
	require.Equal(t, 120.0, m.sum("paystream_worker_events_total", "result", "ok", "type", "payment.order.status.updated"))
	require.Equal(t, 0.0, m.sum("paystream_worker_events_total", "result", "nope"))
	require.Equal(t, 2.5, m.sum("odd_total", "path", "/a b,c}", "quote", `say "hi"`, "nl", "x\ny", "back", `c:\tmp`))
	require.Equal(t, 12.0, m.sum("paystream_worker_handle_seconds_count"), "a histogram's series keep their own names")
	require.Equal(t, 12.0, m.sum("paystream_worker_handle_seconds_bucket", "le", "+Inf"))
	require.Equal(t, 1.0, m.sum("up"))
	require.Equal(t, 4.0, m.sum("empty_labels"))
	require.Equal(t, 0.0, m.sum("absent_total"), "an absent metric sums to 0")
	require.Equal(t, 0.0, metrics(nil).sum("up"))
}

// TestParseMetricsRefuses: what is not an exposition is an error naming
// the line, not a page of zeros.
func TestParseMetricsRefuses(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"<html><body>502 Bad Gateway</body></html>": "metrics line 1",
		"up 1\nup\n": "metrics line 2: no value",
		"up one":     "up: value",
		`x{a="b} 1`:  "unterminated value of label a",
		`x{a=b} 1`:   "malformed labels",
		"x 1 2 3":    "want a value and an optional timestamp",
	} {
		_, err := parseMetrics(strings.NewReader(in))
		require.ErrorContains(t, err, want, in)
	}
}
