// Package payer plays payers paying Cobo pay-in orders, and delivers the
// resulting webhooks to a PSP endpoint signed exactly as Cobo signs them.
// Orders end Completed (some overpaid or short within tolerance), Underpaid
// or Expired, some receive late deposits, and delivery can be shuffled and
// duplicated the way Cobo's at-least-once, unordered delivery allows. All
// content derives from Config.Seed, so a run can be reproduced.
//
// It can also play an attacker (Config.ForeignOrders): another Cobo
// customer who registered the PSP's webhook URL as its own endpoint. Cobo
// signs every customer's webhooks with the same key, so that customer's
// orders arrive validly signed, with merchant ids like the PSP's; only
// Cobo's order API, which never knows them, tells them apart.
package payer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
)

// Defaults for Config.
const (
	DefaultConcurrency    = 4
	DefaultMaxAttempts    = 10 // Cobo's documented delivery attempts
	DefaultAttemptTimeout = 2 * time.Second
	DefaultBackoffBase    = 100 * time.Millisecond
	DefaultBackoffMax     = 2 * time.Second
)

// DefaultMerchants are the merchant ids orders are spread over.
var DefaultMerchants = []string{"M1001", "M1002", "M1003"}

// Config configures a Run.
type Config struct {
	// WebhookURL is where events are POSTed; it is also the envelope's url.
	WebhookURL string
	// WebhookKey signs every delivery (Cobo's private half; the receiver
	// trusts its public key).
	WebhookKey ed25519.PrivateKey
	// Orders is how many orders are played.
	Orders int
	// ForeignOrders is how many orders of a foreign Cobo customer are
	// played as well, interleaved evenly with Orders: webhooks of the
	// same kinds, signed with the same WebhookKey, for the same Merchants,
	// each order Completed with a received amount and every second one
	// (the first included) with a late deposit. They are never registered
	// with Sim (GET /v2/payments/orders/{order_id} answers them 404) but
	// recorded there with RecordForeignOrder before their first webhook.
	// A PSP must dead-letter them and allocate nothing. Zero plays none
	// and leaves every other behaviour as it was; our orders are the same
	// whatever ForeignOrders is.
	ForeignOrders int
	// Undelivered is how many of our Orders never have any webhook
	// delivered, as when Cobo gave up on them after its 10 attempts during
	// a long outage: spread evenly over the run, they are played and
	// registered with Sim like any other order (its API and order list
	// know them), but nothing is POSTed for them. Only reconciliation with
	// Cobo's order list can complete them. Zero delivers every order; the
	// orders themselves are the same whatever Undelivered is.
	Undelivered int
	// Merchants are the merchant ids orders belong to; DefaultMerchants
	// when empty.
	Merchants []string
	// Seed determines every order, amount, id, event order and resend.
	Seed uint64
	// Duplicates is the probability (0 to 1) that an event is delivered a
	// second time, later, with the same event_id and body.
	Duplicates float64
	// Shuffle delivers each order's events in a random order instead of
	// the order they happened in.
	Shuffle bool
	// LateRatio is the probability (0 to 1) that a finished order receives
	// a late deposit.
	LateRatio float64
	// Concurrency is how many orders are played at once; DefaultConcurrency
	// when zero. One order's deliveries are always sequential.
	Concurrency int
	// MaxAttempts bounds attempts per delivery on non-2xx answers and
	// transport errors; DefaultMaxAttempts when zero.
	MaxAttempts int
	// Sim, when set, learns every order's final state (PutOrder) before the
	// order's webhooks are delivered, so GET /v2/payments/orders works, and
	// the id of every foreign order (RecordForeignOrder), which it never
	// answers.
	Sim *cobosim.Sim
	// Logger receives progress at info and each failed attempt at debug. It
	// never sees keys or signatures.
	Logger zerolog.Logger
	// HTTP is the client; a default one is used when nil. Redirects are
	// never followed, as Cobo does not follow them.
	HTTP *http.Client

	// Rate bounds how many orders, foreign ones included, start per
	// second; 0 means no bound.
	Rate float64
	// Start anchors the orders' timestamps (all in the two hours before it)
	// and the date in order ids; time.Now() when zero. Fix it, with Seed,
	// for byte-identical webhook bodies.
	Start time.Time
	// AttemptTimeout bounds one delivery attempt; DefaultAttemptTimeout
	// (Cobo's 2 s) when zero.
	AttemptTimeout time.Duration
	// BackoffBase and BackoffMax bound the pause between attempts;
	// DefaultBackoffBase and DefaultBackoffMax when zero.
	BackoffBase, BackoffMax time.Duration
	// TrustHint tells the operator what to do when every answer is 401,
	// which means the receiver does not trust WebhookKey. It is logged at
	// warn level once when the first delivery is abandoned with every
	// answer so far 401, and again when the run ends so. When empty, a
	// hint naming WebhookKey's public key in hex is used.
	TrustHint string
}

func (c Config) withDefaults() Config {
	if len(c.Merchants) == 0 {
		c.Merchants = DefaultMerchants
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = DefaultAttemptTimeout
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(DefaultBackoffMax, c.BackoffBase)
	}
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	if c.TrustHint == "" && len(c.WebhookKey) == ed25519.PrivateKeySize {
		c.TrustHint = "the receiver does not trust the webhook key; trust public key " + hex.EncodeToString(c.WebhookKey.Public().(ed25519.PublicKey)) + " (ingest -cobo-pubkey)"
	}
	return c
}

func (c Config) validate() error {
	u, err := url.Parse(c.WebhookURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("WebhookURL must be an http(s) URL, got %q", c.WebhookURL)
	case len(c.WebhookKey) != ed25519.PrivateKeySize:
		return errors.New("WebhookKey must be an Ed25519 private key")
	case c.Orders < 0 || c.ForeignOrders < 0:
		return fmt.Errorf("Orders and ForeignOrders must not be negative, got %d and %d", c.Orders, c.ForeignOrders)
	case c.Undelivered < 0 || c.Undelivered > c.Orders:
		return fmt.Errorf("Undelivered must be from 0 to Orders (%d), got %d", c.Orders, c.Undelivered)
	case !(c.Duplicates >= 0 && c.Duplicates <= 1) || !(c.LateRatio >= 0 && c.LateRatio <= 1):
		return fmt.Errorf("Duplicates and LateRatio must be from 0 to 1, got %v and %v", c.Duplicates, c.LateRatio)
	case c.Concurrency < 1 || c.MaxAttempts < 1:
		return fmt.Errorf("Concurrency and MaxAttempts must be positive, got %d and %d", c.Concurrency, c.MaxAttempts)
	case !(c.Rate >= 0):
		return fmt.Errorf("Rate must not be negative, got %v", c.Rate)
	case c.AttemptTimeout < 0 || c.BackoffBase < 0 || c.BackoffMax < c.BackoffBase:
		return errors.New("AttemptTimeout and BackoffBase must not be negative, and BackoffMax must be at least BackoffBase")
	}
	for _, m := range c.Merchants {
		if m == "" {
			return errors.New("Merchants must not contain an empty id")
		}
	}
	return nil
}

// Stats summarises a Run. Orders, ByStatus and Late count our orders
// only; Events and the delivery counts include the foreign orders'.
type Stats struct {
	// Orders is how many orders were played to the end.
	Orders int `json:"orders"`
	// ForeignOrders is how many foreign orders were played to the end.
	ForeignOrders int `json:"foreign_orders"`
	// ForeignOrderIDs are their order ids, sorted. They are left out of
	// JSON to keep logged stats short; Sim.ForeignOrderIDs has them too.
	ForeignOrderIDs []string `json:"-"`
	// Undelivered is how many of Orders had no webhook delivered at all
	// (Config.Undelivered); UndeliveredOrderIDs are their ids, sorted.
	Undelivered         int      `json:"undelivered"`
	UndeliveredOrderIDs []string `json:"-"`
	// Events is how many distinct events those orders produced, the
	// undelivered orders' left out.
	Events int `json:"events"`
	// Sent counts HTTP attempts, retries included.
	Sent int `json:"sent"`
	// Unauthorized counts attempts answered 401.
	Unauthorized int `json:"unauthorized"`
	// Accepted counts deliveries that ended with a 2xx answer.
	Accepted int `json:"accepted"`
	// Duplicates counts deliberate resends of an already delivered event.
	Duplicates int `json:"duplicates"`
	// Retried counts attempts that followed a failed attempt.
	Retried int `json:"retried"`
	// Failed counts deliveries abandoned after MaxAttempts.
	Failed int `json:"failed"`
	// Late counts late deposits among the orders played.
	Late int `json:"late"`
	// ByStatus counts the orders played by final status.
	ByStatus map[string]int `json:"by_status"`
}

// EveryAnswerUnauthorized reports whether attempts were made and every
// one was answered 401: the receiver does not trust the webhook key.
func (s Stats) EveryAnswerUnauthorized() bool {
	return s.Sent > 0 && s.Unauthorized == s.Sent
}

// Run plays cfg.Orders orders and delivers their webhooks, then returns.
// It is bounded: every delivery gets at most MaxAttempts attempts of at
// most AttemptTimeout each. Deliveries that never succeed are counted in
// Stats.Failed, not returned as an error. When ctx ends first, Run stops
// promptly and returns the stats so far with ctx's error.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Stats{}, fmt.Errorf("payer config: %w", err)
	}
	p := &player{cfg: cfg, run: runNumber(cfg.Seed), client: httpClient(cfg), stats: Stats{ByStatus: map[string]int{}}}
	cfg.Logger.Info().Int("orders", cfg.Orders).Int("foreign_orders", cfg.ForeignOrders).Int("undelivered", cfg.Undelivered).Uint64("seed", cfg.Seed).Int("run", p.run).Str("url", cfg.WebhookURL).
		Float64("duplicates", cfg.Duplicates).Bool("shuffle", cfg.Shuffle).Float64("late_ratio", cfg.LateRatio).Msg("payer starting")

	jobs := make(chan job)
	go func() {
		defer close(jobs)
		begin := time.Now()
		for i, j := range schedule(cfg.Orders, cfg.ForeignOrders) {
			if cfg.Rate > 0 {
				// Absolute start times: a slow consumer does not lower the rate
				// below what was asked, it only catches up.
				due := begin.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
				if !sleepCtx(ctx, time.Until(due)) {
					return
				}
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	var planErr error
	var errOnce sync.Once
	for range cfg.Concurrency {
		wg.Go(func() {
			for j := range jobs {
				if ctx.Err() != nil {
					continue // drain; the dispatcher stops too
				}
				if err := p.playOrder(ctx, j); err != nil {
					errOnce.Do(func() { planErr = err })
				}
			}
		})
	}
	wg.Wait()
	st := p.snapshot()
	log := cfg.Logger.Info().Int("orders", st.Orders).Int("foreign_orders", st.ForeignOrders).Int("undelivered", st.Undelivered).Int("events", st.Events).Int("sent", st.Sent).Int("accepted", st.Accepted).
		Int("duplicates", st.Duplicates).Int("retried", st.Retried).Int("failed", st.Failed).Int("late", st.Late).
		Interface("by_status", st.ByStatus)
	log.Msg("payer finished")
	if st.EveryAnswerUnauthorized() {
		cfg.Logger.Warn().Int("sent", st.Sent).Msg("every answer was 401: " + cfg.TrustHint)
	}
	if planErr != nil {
		return st, planErr
	}
	if st.Orders < cfg.Orders || st.ForeignOrders < cfg.ForeignOrders {
		if err := ctx.Err(); err != nil {
			return st, err
		}
	}
	return st, nil
}

// job is one order to play: our order index, or the foreign order index.
type job struct {
	index   int
	foreign bool
}

// schedule returns the order in which to play `orders` of our orders and
// `foreign` foreign ones: each kind in index order, the foreign ones spread
// evenly among ours (rounded to nearest, so a single foreign order comes
// in the middle, not last). With no foreign orders it is our orders in
// index order, as before foreign orders existed.
func schedule(orders, foreign int) []job {
	total := orders + foreign
	out := make([]job, 0, total)
	var ours, theirs int
	for k := range total {
		// Foreign orders among the first k+1 slots, rounded to nearest.
		if (k+1)*foreign+total/2 >= (theirs+1)*total {
			out = append(out, job{index: theirs, foreign: true})
			theirs++
		} else {
			out = append(out, job{index: ours})
			ours++
		}
	}
	return out
}

type player struct {
	cfg    Config
	run    int
	client *http.Client

	mu     sync.Mutex
	stats  Stats
	played int // orders of both kinds played to the end, for progress
	// hinted is set once TrustHint was logged during the run.
	hinted bool
}

func (p *player) snapshot() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stats
	st.ByStatus = maps.Clone(p.stats.ByStatus)
	st.ForeignOrderIDs = slices.Sorted(slices.Values(p.stats.ForeignOrderIDs))
	st.UndeliveredOrderIDs = slices.Sorted(slices.Values(p.stats.UndeliveredOrderIDs))
	return st
}

func (p *player) count(f func(*Stats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// playOrder delivers one order's events in their planned sequence. A
// delivery that fails every attempt does not stop the others, as Cobo
// keeps delivering an order's other events.
func (p *player) playOrder(ctx context.Context, j job) error {
	planner := planOrder
	if j.foreign {
		planner = planForeignOrder
	}
	o, err := planner(p.cfg, p.run, p.cfg.Start, j.index)
	if err != nil {
		return err
	}
	if o.foreign {
		// Another customer's order: Cobo's API never answers it to us.
		if p.cfg.Sim != nil {
			p.cfg.Sim.RecordForeignOrder(o.orderID)
		}
	} else if p.cfg.Sim != nil {
		// The story is in the past, so the API already shows the final
		// state, late deposit included.
		data, err := o.apiOrder()
		if err != nil {
			return err
		}
		p.cfg.Sim.PutOrder(data)
	}
	undelivered := !j.foreign && undelivered(j.index, p.cfg.Orders, p.cfg.Undelivered)
	if undelivered {
		// Cobo gave up on every webhook of this order.
		o.deliveries = nil
	}
	for _, d := range o.deliveries {
		if ctx.Err() != nil {
			return nil
		}
		if d.resend {
			p.count(func(s *Stats) { s.Duplicates++ })
		}
		p.deliver(ctx, d)
	}
	if ctx.Err() != nil {
		return nil
	}
	var done int
	p.count(func(s *Stats) {
		if undelivered {
			s.Undelivered++
			s.UndeliveredOrderIDs = append(s.UndeliveredOrderIDs, o.orderID)
		} else {
			s.Events += o.events
		}
		if o.foreign {
			s.ForeignOrders++
			s.ForeignOrderIDs = append(s.ForeignOrderIDs, o.orderID)
		} else {
			s.Orders++
			s.ByStatus[o.status]++
			if o.late {
				s.Late++
			}
		}
		p.played++
		done = p.played
	})
	p.cfg.Logger.Debug().Str("order_id", o.orderID).Bool("foreign", o.foreign).Str("status", o.status).Int("deliveries", len(o.deliveries)).Bool("late", o.late).Msg("order played")
	// Progress at every tenth of the run, so big runs stay readable.
	if total := p.cfg.Orders + p.cfg.ForeignOrders; done*10/total != (done-1)*10/total {
		st := p.snapshot()
		p.cfg.Logger.Info().Int("played", done).Int("of", total).Int("sent", st.Sent).Int("accepted", st.Accepted).
			Int("retried", st.Retried).Int("failed", st.Failed).Msg("payer progress")
	}
	return nil
}

// undelivered reports whether our order index is one of the undelivered
// of orders: spread evenly, exactly undelivered of them.
func undelivered(index, orders, undelivered int) bool {
	return (index+1)*undelivered/orders > index*undelivered/orders
}

// deliver POSTs d until a 2xx answer, at most MaxAttempts times, pausing
// with capped exponential backoff between attempts.
func (p *player) deliver(ctx context.Context, d delivery) {
	var last string
	for attempt := 1; attempt <= p.cfg.MaxAttempts; attempt++ {
		if attempt > 1 {
			p.count(func(s *Stats) { s.Retried++ })
			if !sleepCtx(ctx, p.backoff(attempt-1)) {
				return
			}
		}
		status, err := p.post(ctx, d)
		p.count(func(s *Stats) {
			s.Sent++
			if err == nil && status == http.StatusUnauthorized {
				s.Unauthorized++
			}
		})
		if err == nil && status >= 200 && status < 300 {
			p.count(func(s *Stats) { s.Accepted++ })
			return
		}
		if ctx.Err() != nil {
			return
		}
		last = strconv.Itoa(status)
		if err != nil {
			last = err.Error()
		}
		p.cfg.Logger.Debug().Str("event_id", d.eventID).Str("order_id", d.orderID).Int("attempt", attempt).Str("result", last).Msg("delivery attempt failed")
	}
	var hint bool
	p.count(func(s *Stats) {
		s.Failed++
		hint = !p.hinted && s.EveryAnswerUnauthorized()
		p.hinted = p.hinted || hint
	})
	p.cfg.Logger.Warn().Str("event_id", d.eventID).Str("order_id", d.orderID).Str("type", d.eventType).
		Int("attempts", p.cfg.MaxAttempts).Str("last_result", last).Msg("delivery abandoned")
	if hint {
		p.cfg.Logger.Warn().Msg("every answer so far was 401: " + p.cfg.TrustHint)
	}
}

// post makes one signed attempt and returns the HTTP status.
func (p *player) post(ctx context.Context, d delivery) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.WebhookURL, bytes.NewReader(d.body))
	if err != nil {
		return 0, err
	}
	// Each attempt is signed with its own timestamp, in milliseconds.
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	sig := cobo.SignWebhook(p.cfg.WebhookKey, d.body, ts)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "paystream-sandbox-payer")
	if d.underscore {
		// Set directly so the spelling goes out exactly as written.
		req.Header[cobo.HeaderTimestampAlt] = []string{ts}
		req.Header[cobo.HeaderSignatureAlt] = []string{sig}
	} else {
		req.Header.Set(cobo.HeaderTimestamp, ts)
		req.Header.Set(cobo.HeaderSignature, sig)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}

// backoff returns the pause before retry n (from 1): doubling from
// BackoffBase, capped at BackoffMax, jittered over its upper half so that
// retries of many orders spread out.
func (p *player) backoff(n int) time.Duration {
	return backoff.Policy{Base: p.cfg.BackoffBase, Max: p.cfg.BackoffMax, Jitter: backoff.UpperHalf}.Delay(n)
}

// sleepCtx waits d unless ctx ends first; it reports whether ctx is alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// httpClient copies cfg.HTTP (or a default client) with redirects disabled:
// Cobo treats a redirect as a failed delivery.
func httpClient(cfg Config) *http.Client {
	var c http.Client
	if cfg.HTTP != nil {
		c = *cfg.HTTP
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.Concurrency
		c.Transport = tr
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}
