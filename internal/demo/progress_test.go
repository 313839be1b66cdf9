package demo

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// defaultRun is a moment of a default run (200 orders), every figure
// different so that each can be found in its line.
var defaultRun = snapshot{
	in:   arrivals{stored: 181, dups: 53, rejected: 4, events: 179},
	out:  outcomes{completed: 31, expired: 7, underpaid: 2, done: 75, failed: 3, refused: 1, inFlight: 12},
	prov: providers{batches: 5, items: 46, faults: 6, reusedIDs: 2, bitgo: 29},
}

// bigRun is the end of a run ten times larger (-orders 2000
// -undelivered-orders 250, an hour long) with every optional figure shown
// (orders reconciled, batches waiting, items stuck) and the others as
// wide as such a run makes them, or wider.
var bigRun = snapshot{
	in:   arrivals{stored: 9170, dups: 2870, rejected: 120, events: 9170, reconciled: 250},
	out:  outcomes{completed: 1400, expired: 400, underpaid: 200, done: 4070, failed: 120, refused: 110, inFlight: 1240},
	prov: providers{batches: 330, items: 2530, faults: 120, reusedIDs: 115, bitgo: 1540, waiting: 12, stuck: 340},
}

// A figure is a run of digits; labelled, it is followed by "s" (seconds),
// "/s" (a rate) or a space and a word saying what it counts.
var (
	figure   = regexp.MustCompile(`\d+\S*( [a-z]+)?`)
	labelled = regexp.MustCompile(`^\d+(s|/s| [a-z]+)$`)
)

// requireFits checks a line's width and that every figure in it is
// labelled.
func requireFits(t *testing.T, line string) {
	t.Helper()
	require.Less(t, utf8.RuneCountInString(line), maxLineWidth, "too wide: %q", line)
	for _, f := range figure.FindAllString(line, -1) {
		require.Regexp(t, labelled, strings.TrimRight(f, ",()"), "figure without a label in %q", line)
	}
}

// render is the three lines of s after elapsed, at an event rate.
func render(elapsed time.Duration, s snapshot, rate float64) []string {
	return []string{renderArrivals(elapsed, s.in, rate), renderOutcomes(elapsed, s.out), renderProviders(elapsed, s.prov)}
}

// TestProgressLinesFitAndLabelEveryFigure renders the lines of fixed
// states: under 120 columns, every figure followed by its label, the
// BitGo figure included.
func TestProgressLinesFitAndLabelEveryFigure(t *testing.T) {
	t.Parallel()
	lines := render(12*time.Second, defaultRun, 65)
	require.Equal(t, []string{
		"  12s │ webhooks 181 stored, 53 dup, 4 rejected │ 179 events handled, 65/s",
		"  12s │ orders 31 completed, 7 expired, 2 underpaid │ 75 allocated, 12 pending, 3 failed (1 refused)",
		"  12s │ Cobo 46 items, 5 batches, 6 faults │ BitGo 29 allocations",
	}, lines)
	for _, l := range lines {
		requireFits(t, l)
	}

	lines = render(3599*time.Second, bigRun, 1234)
	t.Logf("a large run:\n%s", strings.Join(lines, "\n"))
	require.Contains(t, lines[0], "│ 250 orders reconciled")
	require.Contains(t, lines[2], "│ 12 batches waiting, 340 items stuck")
	for _, l := range lines {
		requireFits(t, l)
	}

	one := snapshot{in: arrivals{events: 1, reconciled: 1}, prov: providers{items: 1, batches: 1, faults: 1, bitgo: 1, waiting: 1, stuck: 1}}
	lines = render(time.Second, one, 1)
	require.Contains(t, lines[0], "1 event handled")
	require.Contains(t, lines[0], "1 order reconciled")
	require.Equal(t, "   1s │ Cobo 1 item, 1 batch, 1 fault │ BitGo 1 allocation │ 1 batch waiting, 1 item stuck", lines[2])
}

// TestProgressPrintsOnlyChanges feeds snapshots second by second: nothing
// is printed before anything happened or while nothing changes, and a
// change prints only the line whose figures changed.
func TestProgressPrintsOnlyChanges(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_700_000_000, 0)
	p := newProgress(t0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	require.Empty(t, p.lines(at(1), snapshot{}), "nothing happened yet")

	s := defaultRun
	require.Len(t, p.lines(at(2), s), 3, "the first figures print every line")
	for i := 3; i < 30; i++ {
		require.Empty(t, p.lines(at(i), s), "unchanged at %ds", i)
	}

	s.prov.bitgo++
	got := p.lines(at(30), s)
	require.Len(t, got, 1)
	require.Contains(t, got[0], "BitGo 30 allocations")
	require.True(t, strings.HasPrefix(got[0], "  30s │ Cobo "))
	require.Empty(t, p.lines(at(31), s))

	// The rate is the events since the arrivals line was last printed,
	// over the time since: 56 events in 28 s.
	s.in.events += 56
	got = p.lines(at(32), s)
	require.Equal(t, []string{"  32s │ webhooks 181 stored, 53 dup, 4 rejected │ 235 events handled, 2/s"}, got)

	s.out.inFlight, s.out.done = 0, s.out.done+12
	got = p.lines(at(33), s)
	require.Len(t, got, 1)
	require.Contains(t, got[0], "87 allocated, 0 pending")
}

// TestScrape reads the figures from fake processes: ingest's and the
// workers' metrics, the sandbox's state and BitGo list; a source that
// stops answering keeps its last figures.
func TestScrape(t *testing.T) {
	t.Parallel()
	ingest := serveText(t, `# HELP paystream_webhook_requests_total Webhook requests by HTTP status code.
# TYPE paystream_webhook_requests_total counter
paystream_webhook_requests_total{code="200"} 234
paystream_webhook_requests_total{code="401"} 4
paystream_webhook_duplicates_total 53
`)
	worker := `paystream_worker_events_total{result="ok",type="payment.order.status.updated"} 100
paystream_worker_events_total{result="ok",type="payment.transaction.completed"} %d
paystream_order_transitions_total{status="Completed"} 16
paystream_order_transitions_total{status="Expired"} 4
paystream_order_transitions_total{status="Underpaid"} 1
paystream_order_transitions_total{status="Pending"} 40
paystream_allocation_items_total{backend="cobo",status="planned"} 50
paystream_allocation_items_total{backend="bitgo",status="planned"} 20
paystream_allocation_items_total{backend="cobo",status="completed"} 40
paystream_allocation_items_total{backend="bitgo",status="completed"} 15
paystream_allocation_items_total{backend="cobo",status="failed"} 2
paystream_allocation_items_refused_total{backend="cobo"} 1
paystream_allocation_batches_waiting{reason="credentials"} %d
paystream_allocation_items_stuck 0
paystream_reconcile_orders_repaired_total 3
`
	w1 := serveText(t, fmt.Sprintf(worker, 10, 1))
	w2 := serveText(t, fmt.Sprintf(worker, 20, 2))
	var down atomic.Bool
	sandbox := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/state" {
			fmt.Fprint(w, `{"batches":5,"items":46,"duplicate_requests":2,"faults_applied":6,"foreign_order_items":1,"foreign_order_bitgo_allocations":1}`)
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"allocations":[{},{},{}]}`)
	}))
	t.Cleanup(sandbox.Close)

	sc := &scraper{client: sandbox.Client(), admin: ingest.URL, workers: []string{w1.URL, w2.URL},
		state: sandbox.URL + "/state", bitgo: sandbox.URL + "/bitgo", bitgoToken: "tok"}
	want := snapshot{
		in:            arrivals{stored: 181, dups: 53, rejected: 4, events: 230, reconciled: 6},
		out:           outcomes{completed: 32, expired: 8, underpaid: 2, done: 110, failed: 4, refused: 2, inFlight: 140 - 114},
		prov:          providers{batches: 5, items: 46, faults: 6, reusedIDs: 2, bitgo: 3, waiting: 2},
		foreignAllocs: 2,
	}
	require.Equal(t, want, sc.scrape())

	down.Store(true)
	ingest.Close()
	require.Equal(t, want, sc.scrape(), "sources that stop answering keep their last figures")
}

func serveText(t *testing.T, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}
