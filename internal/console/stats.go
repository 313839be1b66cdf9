package console

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/events"
)

// rateWindow is the span per-minute rates are computed over.
const rateWindow = time.Minute

// watchedConsumers are the durable consumers whose lag the overview shows.
var watchedConsumers = []struct{ stream, name string }{
	{events.StreamName, events.ConsumerName},
	{allocation.IntentStream, "paystream-batcher"},
	{allocation.IntentStream, "paystream-bitgo"},
}

// webhookCounts are ingest's webhook counters, by answer.
type webhookCounts struct {
	Accepted    float64 `json:"accepted"`
	Duplicate   float64 `json:"duplicate"`
	Rejected    float64 `json:"rejected"`
	Unavailable float64 `json:"unavailable"`
}

// sample is what one round of the sampler saw.
type sample struct {
	at time.Time
	// lastSeq is the event stream's last sequence; ackFloor the workers'
	// consumer's ack floor (every event up to it is processed).
	lastSeq, ackFloor uint64
	haveStream        bool
	haveFloor         bool
	webhooks          webhookCounts
	haveWebhooks      bool
}

// ConsumerLag is a durable consumer's backlog, from consumer info.
type ConsumerLag struct {
	Stream   string `json:"stream"`
	Consumer string `json:"consumer"`
	// Pending are messages not delivered yet; AckPending delivered and
	// not acked yet; Redelivered delivered more than once and not acked.
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// AckFloor is the stream sequence up to which everything is acked.
	AckFloor uint64 `json:"ack_floor"`
}

// sampler polls JetStream (and ingest's metrics, when configured) every
// SampleEvery and keeps the samples of the last rate window, from which
// the overview's per-minute rates are computed. It never fails: what it
// cannot read is reported as an error beside the figures.
type sampler struct {
	js        jetstream.JetStream
	cfg       Config
	client    *http.Client
	mu        sync.Mutex
	samples   []sample
	consumers []ConsumerLag
	streamMsg uint64
	dlqMsgs   uint64
	errs      map[string]string
}

func newSampler(js jetstream.JetStream, cfg Config) *sampler {
	return &sampler{js: js, cfg: cfg, client: &http.Client{Timeout: 2 * time.Second}, errs: map[string]string{}}
}

func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.SampleEvery)
	defer t.Stop()
	for {
		s.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll takes one sample.
func (s *sampler) poll(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, min(s.cfg.SampleEvery, 3*time.Second)+time.Second)
	defer cancel()
	smp := sample{at: time.Now()}
	errs := map[string]string{}
	var streamMsgs, dlqMsgs uint64
	if st, err := s.js.Stream(ctx, events.StreamName); err == nil {
		state := st.CachedInfo().State
		smp.lastSeq, smp.haveStream, streamMsgs = state.LastSeq, true, state.Msgs
	} else {
		errs["events"] = fmt.Sprintf("stream %s: %v", events.StreamName, err)
	}
	if st, err := s.js.Stream(ctx, events.DLQStreamName); err == nil {
		dlqMsgs = st.CachedInfo().State.Msgs
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		errs["dead_letters"] = fmt.Sprintf("stream %s: %v", events.DLQStreamName, err)
	}
	var lags []ConsumerLag
	for _, wc := range watchedConsumers {
		cons, err := s.js.Consumer(ctx, wc.stream, wc.name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			// Not created: the workers run without rules, or not yet.
			continue
		}
		if err != nil {
			errs["consumers"] = fmt.Sprintf("consumer %s: %v", wc.name, err)
			continue
		}
		info := cons.CachedInfo()
		lags = append(lags, ConsumerLag{Stream: wc.stream, Consumer: wc.name, Pending: info.NumPending, AckPending: info.NumAckPending,
			Redelivered: info.NumRedelivered, AckFloor: info.AckFloor.Stream})
		if wc.name == events.ConsumerName {
			smp.ackFloor, smp.haveFloor = info.AckFloor.Stream, true
		}
	}
	if s.cfg.IngestAdminURL != "" {
		w, err := s.scrapeIngest(ctx)
		if err != nil {
			errs["webhooks"] = err.Error()
		} else {
			smp.webhooks, smp.haveWebhooks = w, true
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, smp)
	// Keep one sample older than the window, the base of its rates.
	drop := 0
	for drop+1 < len(s.samples) && smp.at.Sub(s.samples[drop+1].at) >= rateWindow {
		drop++
	}
	s.samples = append(s.samples[:0], s.samples[drop:]...)
	s.consumers, s.errs = lags, errs
	if smp.haveStream {
		s.streamMsg = streamMsgs
	}
	s.dlqMsgs = dlqMsgs
}

// scrapeIngest reads the webhook counters from ingest's /metrics.
func (s *sampler) scrapeIngest(ctx context.Context) (webhookCounts, error) {
	u := strings.TrimSuffix(s.cfg.IngestAdminURL, "/") + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return webhookCounts{}, fmt.Errorf("ingest metrics: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+s.cfg.IngestToken)
	resp, err := s.client.Do(req)
	if err != nil {
		return webhookCounts{}, fmt.Errorf("ingest metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return webhookCounts{}, fmt.Errorf("ingest metrics: %s answered %s (is -ingest-admin-url right, and the admin token ingest's?)", u, resp.Status)
	}
	var w webhookCounts
	var ok200 float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, v, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		switch name {
		case "paystream_webhook_duplicates_total":
			w.Duplicate += v
		case "paystream_webhook_requests_total":
			code := labelValue(labels, "code")
			switch {
			case code == "200":
				ok200 += v
			case strings.HasPrefix(code, "5"):
				w.Unavailable += v
			default:
				w.Rejected += v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return webhookCounts{}, fmt.Errorf("ingest metrics: %w", err)
	}
	// A duplicate is answered 200 too; accepted are the new ones.
	w.Accepted = max(0, ok200-w.Duplicate)
	return w, nil
}

// parseSample reads one line of the Prometheus text format: name, the
// text between the braces, and the value. Comments and blank lines are
// not samples.
func parseSample(line string) (name, labels string, v float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	i := strings.LastIndexByte(line, ' ')
	if i < 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(line[i+1:], 64)
	if err != nil {
		return "", "", 0, false
	}
	series := line[:i]
	if j := strings.IndexByte(series, '{'); j >= 0 {
		return series[:j], strings.TrimSuffix(series[j+1:], "}"), v, true
	}
	return series, "", v, true
}

// labelValue returns label's value in a label list such as code="200".
func labelValue(labels, label string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) == label {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// Rates are per-minute rates over the last minute (or the time sampled
// so far, when shorter); nil when not known yet.
type Rates struct {
	// Over is the span the rates were computed over, in seconds.
	Over float64 `json:"over_seconds"`
	// Stored are events stored per minute (the event stream's sequence);
	// Processed events the workers finished (their consumer's ack floor).
	Stored    *float64 `json:"stored_per_minute"`
	Processed *float64 `json:"processed_per_minute"`
	// Webhooks are ingest's answers per minute (with IngestAdminURL).
	Accepted    *float64 `json:"webhooks_accepted_per_minute"`
	Duplicate   *float64 `json:"webhooks_duplicate_per_minute"`
	Rejected    *float64 `json:"webhooks_rejected_per_minute"`
	Unavailable *float64 `json:"webhooks_unavailable_per_minute"`
}

// Sampled is the sampler's latest view.
type Sampled struct {
	At        time.Time     `json:"sampled_at"`
	Rates     Rates         `json:"rates"`
	Events    uint64        `json:"events_stored"`
	LastSeq   uint64        `json:"events_last_seq"`
	Consumers []ConsumerLag `json:"consumers"`
	// DeadLetters is how many the dead-letter stream holds.
	DeadLetters uint64 `json:"dead_letters"`
	// Webhooks are ingest's counters since it started, when read.
	Webhooks *webhookCounts `json:"webhooks,omitempty"`
	// Errors says what could not be read, by figure.
	Errors map[string]string `json:"errors,omitempty"`
}

// latest returns the newest sample's figures and the rates.
func (s *sampler) latest() Sampled {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Sampled{Consumers: s.consumers, Events: s.streamMsg, DeadLetters: s.dlqMsgs}
	if len(s.errs) > 0 {
		out.Errors = map[string]string{}
		for k, v := range s.errs {
			out.Errors[k] = v
		}
	}
	if len(s.samples) == 0 {
		return out
	}
	last := s.samples[len(s.samples)-1]
	out.At, out.LastSeq = last.at, last.lastSeq
	if last.haveWebhooks {
		w := last.webhooks
		out.Webhooks = &w
	}
	// The base is the oldest sample within the window (or the one just
	// before it), so the rate covers close to a minute once one passed.
	base := s.samples[0]
	span := last.at.Sub(base.at)
	if span < s.cfg.SampleEvery/2 || span <= 0 {
		return out
	}
	out.Rates.Over = span.Seconds()
	perMin := func(now, then float64) *float64 {
		d := now - then
		if d < 0 {
			// A counter reset (ingest restarted): count from zero.
			d = now
		}
		r := d / span.Minutes()
		return &r
	}
	if last.haveStream && base.haveStream {
		out.Rates.Stored = perMin(float64(last.lastSeq), float64(base.lastSeq))
	}
	if last.haveFloor && base.haveFloor {
		out.Rates.Processed = perMin(float64(last.ackFloor), float64(base.ackFloor))
	}
	if last.haveWebhooks && base.haveWebhooks {
		out.Rates.Accepted = perMin(last.webhooks.Accepted, base.webhooks.Accepted)
		out.Rates.Duplicate = perMin(last.webhooks.Duplicate, base.webhooks.Duplicate)
		out.Rates.Rejected = perMin(last.webhooks.Rejected, base.webhooks.Rejected)
		out.Rates.Unavailable = perMin(last.webhooks.Unavailable, base.webhooks.Unavailable)
	}
	return out
}

// ackFloor returns the workers' consumer's ack floor, read now.
func (c *Console) ackFloor(ctx context.Context) (uint64, error) {
	cons, err := c.js.Consumer(ctx, events.StreamName, events.ConsumerName)
	if err != nil {
		return 0, fmt.Errorf("consumer %s: %w", events.ConsumerName, err)
	}
	return cons.CachedInfo().AckFloor.Stream, nil
}
