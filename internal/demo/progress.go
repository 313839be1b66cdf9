package demo

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// The figures of the three progress lines. Each line is printed only
// when one of its own figures changed.

// arrivals are what came in: webhooks at ingest, the events the workers
// handled, and the orders reconciliation repaired.
type arrivals struct {
	stored, dups, rejected int // webhooks
	events                 int // handled by the workers
	reconciled             int // orders repaired by reconciliation
}

// outcomes are the orders' final statuses and their allocations as the
// workers record them.
type outcomes struct {
	completed, expired, underpaid int // orders by final status
	done, failed, inFlight        int // allocation items
	refused                       int // of failed: held by no provider (refused, or invalid when planned)
}

// final is how many orders reached a final status.
func (o outcomes) final() int { return o.completed + o.expired + o.underpaid }

// providers are the allocations as Cobo and BitGo hold them, the faults
// the sandbox injected, and what waits on a provider.
type providers struct {
	batches, items    int // at Cobo
	faults, reusedIDs int // Cobo faults injected, request_ids sent again (not printed while running)
	bitgo             int // allocations at BitGo
	waiting, stuck    int // batches waiting, items stuck
}

// snapshot is every figure the demo reads, at one moment.
type snapshot struct {
	in   arrivals
	out  outcomes
	prov providers
	// foreignAllocs counts Cobo items and BitGo allocations naming a
	// foreign order; it is checked once settled, not printed as progress.
	foreignAllocs int
}

// maxLineWidth bounds a progress line, in terminal columns (runes), for
// runs up to ten times the default (2,000 orders): the tests render such
// a run's figures. Larger runs may widen a line by a few columns.
const maxLineWidth = 120

// progress turns snapshots into lines: up to three, each printed only
// when one of its own figures changed since it was last printed, so that
// nothing is printed while nothing changes. All-zero figures count as
// printed: nothing is printed before anything happened.
type progress struct {
	start time.Time
	// last are the figures last printed; inAt is when the arrivals line
	// was, for the event rate.
	last snapshot
	inAt time.Time
}

func newProgress(start time.Time) *progress {
	return &progress{start: start, inAt: start}
}

// lines returns the lines to print for s at now, in line order.
func (p *progress) lines(now time.Time, s snapshot) []string {
	var out []string
	elapsed := now.Sub(p.start)
	if s.in != p.last.in {
		rate := 0.0
		if d := now.Sub(p.inAt).Seconds(); d > 0 {
			rate = float64(s.in.events-p.last.in.events) / d
		}
		out = append(out, renderArrivals(elapsed, s.in, rate))
		p.last.in, p.inAt = s.in, now
	}
	if s.out != p.last.out {
		out = append(out, renderOutcomes(elapsed, s.out))
		p.last.out = s.out
	}
	if s.prov != p.last.prov {
		out = append(out, renderProviders(elapsed, s.prov))
		p.last.prov = s.prov
	}
	return out
}

// Every figure of a line is followed by what it counts.

// renderArrivals: webhooks, events handled (and their rate since the line
// was last printed), and orders reconciled once there are any.
func renderArrivals(elapsed time.Duration, in arrivals, eventRate float64) string {
	line := fmt.Sprintf("%s │ webhooks %d stored, %d dup, %d rejected │ %s handled, %.0f/s",
		stamp(elapsed), in.stored, in.dups, in.rejected, count(in.events, "event", "events"), eventRate)
	if in.reconciled > 0 {
		line += fmt.Sprintf(" │ %s reconciled", count(in.reconciled, "order", "orders"))
	}
	return line
}

// renderOutcomes: orders by final status, then allocation items:
// allocated (completed at the provider), pending (planned, not yet
// completed or failed), failed, and of those refused.
func renderOutcomes(elapsed time.Duration, o outcomes) string {
	return fmt.Sprintf("%s │ orders %d completed, %d expired, %d underpaid │ %d allocated, %d pending, %d failed (%d refused)",
		stamp(elapsed), o.completed, o.expired, o.underpaid, o.done, o.inFlight, o.failed, o.refused)
}

// renderProviders: Cobo's items and batches with the faults the sandbox
// injected, BitGo's allocations, then batches waiting and items stuck
// once there are any. (Request_ids sent again are in the final summary.)
func renderProviders(elapsed time.Duration, p providers) string {
	line := fmt.Sprintf("%s │ Cobo %s, %s, %s │ BitGo %s", stamp(elapsed),
		count(p.items, "item", "items"), count(p.batches, "batch", "batches"), count(p.faults, "fault", "faults"),
		count(p.bitgo, "allocation", "allocations"))
	if p.waiting > 0 || p.stuck > 0 {
		line += fmt.Sprintf(" │ %s waiting, %s stuck", count(p.waiting, "batch", "batches"), count(p.stuck, "item", "items"))
	}
	return line
}

// count is n with the singular or plural noun.
func count(n int, singular, plural string) string {
	if n == 1 {
		return "1 " + singular
	}
	return fmt.Sprintf("%d %s", n, plural)
}

// stamp is the elapsed time in whole seconds, right-aligned.
func stamp(d time.Duration) string { return fmt.Sprintf("%5s", fmt.Sprintf("%ds", int(d.Seconds()))) }

// scraper reads the processes' figures over HTTP.
type scraper struct {
	client  *http.Client
	admin   string   // ingest's /metrics
	workers []string // each worker's /metrics
	state   string   // the sandbox's /sandbox/state
	// bitgo lists the sandbox's BitGo allocations with bitgoToken.
	bitgo, bitgoToken string

	// lastMetrics and last keep each source's last good answer, so that
	// one slow answer does not show as figures dropping to zero.
	lastMetrics map[string]metrics
	last        snapshot
}

// scrape reads every process into one snapshot. A process that does not
// answer adds nothing, as between its start and its first answer.
func (sc *scraper) scrape() snapshot {
	var s snapshot
	ing := sc.metrics(sc.admin)
	dups := int(ing.sum("paystream_webhook_duplicates_total"))
	s.in.dups = dups
	s.in.stored = int(ing.sum("paystream_webhook_requests_total", "code", "200")) - dups
	s.in.rejected = int(ing.sum("paystream_webhook_requests_total")) - s.in.stored - dups
	var planned int
	for _, u := range sc.workers {
		w := sc.metrics(u)
		s.in.events += int(w.sum("paystream_worker_events_total"))
		s.out.completed += int(w.sum("paystream_order_transitions_total", "status", "Completed"))
		s.out.expired += int(w.sum("paystream_order_transitions_total", "status", "Expired"))
		s.out.underpaid += int(w.sum("paystream_order_transitions_total", "status", "Underpaid"))
		s.in.reconciled += int(w.sum("paystream_reconcile_orders_repaired_total"))
		planned += int(w.sum("paystream_allocation_items_total", "status", "planned"))
		s.out.done += int(w.sum("paystream_allocation_items_total", "status", "completed"))
		s.out.failed += int(w.sum("paystream_allocation_items_total", "status", "failed"))
		s.out.refused += int(w.sum("paystream_allocation_items_refused_total"))
		// Gauges every worker computes over all batches: take the largest.
		s.prov.waiting = max(s.prov.waiting, int(w.sum("paystream_allocation_batches_waiting")))
		s.prov.stuck = max(s.prov.stuck, int(w.sum("paystream_allocation_items_stuck")))
	}
	s.out.inFlight = max(0, planned-s.out.done-s.out.failed)
	var st struct {
		Batches           int `json:"batches"`
		Items             int `json:"items"`
		DuplicateRequests int `json:"duplicate_requests"`
		FaultsApplied     int `json:"faults_applied"`
		ForeignItems      int `json:"foreign_order_items"`
		ForeignBitGo      int `json:"foreign_order_bitgo_allocations"`
	}
	if sc.getJSON(sc.state, "", &st) {
		s.prov.batches, s.prov.items, s.prov.reusedIDs, s.prov.faults = st.Batches, st.Items, st.DuplicateRequests, st.FaultsApplied
		s.foreignAllocs = st.ForeignItems + st.ForeignBitGo
	} else {
		s.prov.batches, s.prov.items, s.prov.reusedIDs, s.prov.faults = sc.last.prov.batches, sc.last.prov.items, sc.last.prov.reusedIDs, sc.last.prov.faults
		s.foreignAllocs = sc.last.foreignAllocs
	}
	var list struct {
		Allocations []json.RawMessage `json:"allocations"`
	}
	if sc.getJSON(sc.bitgo, sc.bitgoToken, &list) {
		s.prov.bitgo = len(list.Allocations)
	} else {
		s.prov.bitgo = sc.last.prov.bitgo
	}
	sc.last = s
	return s
}

// metrics scrapes url; when it does not answer well, its last good
// answer (nil, all sums 0, before the first).
func (sc *scraper) metrics(url string) metrics {
	if sc.lastMetrics == nil {
		sc.lastMetrics = map[string]metrics{}
	}
	resp, err := sc.client.Get(url)
	if err != nil {
		return sc.lastMetrics[url]
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sc.lastMetrics[url]
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return sc.lastMetrics[url]
	}
	sc.lastMetrics[url] = m
	return m
}

// getJSON decodes url's 200 answer into v, with a Bearer token if given.
func (sc *scraper) getJSON(url, token string, v any) bool {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := sc.client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(v) == nil
}
