// Package webhook is the HTTP endpoint Cobo delivers webhooks to. It
// verifies each delivery, parses its envelope, and answers 200 only after
// the Store has durably stored it. It knows nothing of how storing works.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpapi"
)

// Store durably stores verified deliveries.
type Store interface {
	// Store returns once d is durably stored. duplicate is true when an
	// event with the same event_id was already stored.
	Store(ctx context.Context, d cobo.Delivery) (duplicate bool, err error)
}

// Errors the handler answers with, besides cobo's signature and envelope
// errors; httpapi.Status maps them all.
var (
	// ErrStale: Biz-Timestamp is outside the allowed clock skew (401).
	ErrStale = fmt.Errorf("stale or future timestamp: %w", httpapi.ErrUnauthorized)
	// ErrStoreUnavailable: the event could not be stored in time (503).
	ErrStoreUnavailable = fmt.Errorf("event store %w", httpapi.ErrUnavailable)
)

// Defaults for Config.
const (
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxInFlight bounds the requests handled at once; more get a
	// fast 503 (Cobo retries) instead of queueing past its 2 s deadline.
	DefaultMaxInFlight = 256
	// DefaultStoreTimeout leaves half a second of Cobo's 2 s deadline for
	// the network and writing the answer.
	DefaultStoreTimeout = 1500 * time.Millisecond
)

// Config configures a Handler.
type Config struct {
	// Verifier checks signatures. Required.
	Verifier *cobo.Verifier
	// Store stores verified events. Required.
	Store Store
	// MaxBodyBytes bounds the body; larger ones get 413.
	MaxBodyBytes int64
	// StoreTimeout bounds the time from a request's arrival to its event
	// being stored (reading and verifying included); past it the answer is
	// 503.
	StoreTimeout time.Duration
	// MaxSkew, when positive, rejects a Biz-Timestamp outside now±MaxSkew.
	MaxSkew time.Duration
	// MaxInFlight bounds the requests handled at once.
	MaxInFlight int
	// Now returns the current time; tests may replace it.
	Now func() time.Time
	// Logger receives one line per rejected or stored delivery.
	Logger zerolog.Logger
	// Metrics, when set, records request outcomes.
	Metrics *Metrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = DefaultStoreTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Verifier == nil:
		return errors.New("Verifier is required")
	case c.Store == nil:
		return errors.New("Store is required")
	case c.MaxBodyBytes <= 0:
		return fmt.Errorf("MaxBodyBytes must be positive, got %d", c.MaxBodyBytes)
	case c.StoreTimeout <= 0:
		return fmt.Errorf("StoreTimeout must be positive, got %s", c.StoreTimeout)
	case c.MaxSkew < 0:
		return fmt.Errorf("MaxSkew must not be negative, got %s", c.MaxSkew)
	case c.MaxInFlight < 0:
		return fmt.Errorf("MaxInFlight must be positive, got %d", c.MaxInFlight)
	}
	return nil
}

// Handler serves POST /webhooks/cobo.
type Handler struct {
	cfg Config
	// slots holds one token per request in flight.
	slots chan struct{}
}

// NewHandler returns a Handler for cfg.
func NewHandler(cfg Config) (*Handler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("webhook config: %w", err)
	}
	return &Handler{cfg: cfg, slots: make(chan struct{}, cfg.MaxInFlight)}, nil
}

type response struct {
	Status  string `json:"status"`
	EventID string `json:"event_id,omitempty"`
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d, duplicate, err := h.admit(r)
	code := httpapi.Status(err)
	if m := h.cfg.Metrics; m != nil {
		m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
		switch {
		case code == http.StatusUnauthorized:
			m.signatureFailures.Inc()
		case duplicate:
			m.duplicates.Inc()
		}
	}
	if err != nil {
		ev := h.cfg.Logger.Warn()
		if code >= 500 {
			ev = h.cfg.Logger.Error()
		}
		ev.Int("status", code).Str("event_id", d.EventID).Str("order_id", d.OrderID).Err(err).Msg("webhook rejected")
		if code == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		httpapi.WriteError(w, err)
		return
	}
	status := "accepted"
	if duplicate {
		status = "duplicate"
	}
	h.cfg.Logger.Debug().Str("event_id", d.EventID).Str("order_id", d.OrderID).Str("type", d.Type).Str("result", status).Msg("webhook stored")
	httpapi.WriteJSON(w, http.StatusOK, response{Status: status, EventID: d.EventID})
}

// admit takes one of the MaxInFlight slots, or refuses at once: queueing
// would only answer after Cobo's deadline.
func (h *Handler) admit(r *http.Request) (cobo.Delivery, bool, error) {
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		return cobo.Delivery{}, false, fmt.Errorf("%w: %d webhooks are being handled", httpapi.ErrBusy, h.cfg.MaxInFlight)
	}
	return h.accept(r)
}

// accept runs the checks in the order that gives each failure its own
// status and reads nothing it need not: method, then the signature
// headers' presence and shape (before any byte of the body), size, the
// signature, freshness, shape, then storage.
func (h *Handler) accept(r *http.Request) (cobo.Delivery, bool, error) {
	if r.Method != http.MethodPost {
		return cobo.Delivery{}, false, fmt.Errorf("%w: use POST", httpapi.ErrMethodNotAllowed)
	}
	arrived := time.Now()
	received := h.cfg.Now()
	ts := headerEither(r.Header, cobo.HeaderTimestamp, cobo.HeaderTimestampAlt)
	sig := headerEither(r.Header, cobo.HeaderSignature, cobo.HeaderSignatureAlt)
	if err := cobo.CheckSignatureHeaders(ts, sig); err != nil {
		return cobo.Delivery{}, false, err
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		return cobo.Delivery{}, false, fmt.Errorf("%w: limit is %d bytes", httpapi.ErrTooLarge, h.cfg.MaxBodyBytes)
	}
	body, err := readBody(r, h.cfg.MaxBodyBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return cobo.Delivery{}, false, fmt.Errorf("%w: limit is %d bytes", httpapi.ErrTooLarge, h.cfg.MaxBodyBytes)
		}
		return cobo.Delivery{}, false, fmt.Errorf("%w: read body: %v", cobo.ErrMalformedEvent, err)
	}
	if err := h.cfg.Verifier.Verify(body, ts, sig); err != nil {
		return cobo.Delivery{}, false, err
	}
	if err := h.checkFresh(ts, received); err != nil {
		return cobo.Delivery{}, false, err
	}
	env, err := cobo.ParseEnvelope(body)
	if err != nil {
		return cobo.Delivery{}, false, err
	}
	d := cobo.Delivery{Envelope: env, Body: body, Timestamp: ts, Signature: sig, ReceivedAt: received}

	// The deadline counts from the request's arrival, not from here: a slow
	// upload must not push the answer past Cobo's 2 s.
	ctx, cancel := context.WithDeadline(r.Context(), arrived.Add(h.cfg.StoreTimeout))
	defer cancel()
	start := time.Now()
	duplicate, err := h.cfg.Store.Store(ctx, d)
	if m := h.cfg.Metrics; m != nil {
		m.storeLatency.Observe(time.Since(start).Seconds())
	}
	if err != nil {
		return d, false, fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	return d, duplicate, nil
}

// readBody reads r's body, at most limit bytes (more fails with an
// *http.MaxBytesError). A declared length, checked against limit before,
// sizes the buffer once instead of growing it from 512 bytes.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(nil, r.Body, limit)
	if n := r.ContentLength; n > 0 && n <= limit {
		buf := make([]byte, n)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return io.ReadAll(body)
}

func (h *Handler) checkFresh(ts string, now time.Time) error {
	if h.cfg.MaxSkew <= 0 {
		return nil
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s is not unix milliseconds", ErrStale, cobo.HeaderTimestamp)
	}
	skew := now.Sub(time.UnixMilli(ms))
	if skew > h.cfg.MaxSkew || skew < -h.cfg.MaxSkew {
		return fmt.Errorf("%w: %s is %s from now, allowed ±%s", ErrStale, cobo.HeaderTimestamp, skew.Round(time.Second), h.cfg.MaxSkew)
	}
	return nil
}

// headerEither reads the first non-empty of the named headers. Underscore
// names are not canonicalised by net/http, so they are read from the map.
func headerEither(h http.Header, names ...string) string {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return v
		}
		if vs := h[n]; len(vs) > 0 && vs[0] != "" {
			return vs[0]
		}
	}
	return ""
}

// Metrics are the webhook endpoint's Prometheus metrics.
type Metrics struct {
	requests          *prometheus.CounterVec
	signatureFailures prometheus.Counter
	duplicates        prometheus.Counter
	storeLatency      prometheus.Histogram
}

// NewMetrics registers the webhook metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_webhook_requests_total", Help: "Webhook requests by HTTP status code.",
		}, []string{"code"}),
		signatureFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_webhook_signature_failures_total", Help: "Webhooks rejected for a missing, invalid or stale signature.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_webhook_duplicates_total", Help: "Webhooks whose event_id was already stored.",
		}),
		storeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "paystream_webhook_store_seconds", Help: "Time to store a webhook durably on JetStream.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 1.5, 2},
		}),
	}
	reg.MustRegister(m.requests, m.signatureFailures, m.duplicates, m.storeLatency)
	return m
}
