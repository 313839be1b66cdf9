// Package console is paystream's operator console: a web UI and a JSON
// admin API over the stored events, the orders, their allocations and
// the dead letters, served by `worker console`.
//
// It logs in to NATS as the operator user (it reads the event and
// dead-letter streams, redrives dead letters and re-applies events) and
// serves behind the admin token. Pages are html/template fragments that
// the page's own script (embedded, no CDN) fetches with the token in an
// Authorization header kept in sessionStorage, never in a cookie, so no
// other site can make a browser act on the console. Every action is a JSON
// call under /api/v1/ as well.
//
// Reads reuse the operator tooling of package replay (Replay for an
// order's timeline and re-apply, ListDeadLetters and Redrive); the orders
// list comes from an in-memory Index fed by a watch of the orders bucket.
package console

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/natsconn"
)

// Defaults of Config.
const (
	DefaultListen         = "127.0.0.1:8082"
	DefaultNATSURL        = "nats://127.0.0.1:4222"
	DefaultSampleEvery    = 5 * time.Second
	DefaultRefreshEvery   = 5 * time.Second
	DefaultMaxDeadLetters = 10000
	// DefaultRequestTimeout bounds the NATS work of one request (a
	// timeline, a re-apply, a redrive of many dead letters).
	DefaultRequestTimeout = 25 * time.Second
)

// Config configures the console.
type Config struct {
	// NATSURL is the server list. NATSOptions carry the operator user's
	// credentials and inboxes; ConnectWait bounds the wait for NATS at
	// start-up (0: try once).
	NATSURL     string
	NATSOptions []nats.Option
	ConnectWait time.Duration
	// Listen is the console's HTTP address.
	Listen string
	// Token is the admin token every page's data and every API call
	// needs, as "Authorization: Bearer <token>". Required.
	Token string
	// Verifier holds the trusted Cobo webhook keys: the timeline shows
	// whether each stored event's signature verifies, and re-applying
	// verifies as the workers do. Required.
	Verifier *cobo.Verifier
	// Allocation is the workers' allocation config when they run with
	// rules, NoAllocations says they run without: re-applying an order's
	// events needs one of them, as `worker replay -apply` does, and is
	// refused (the button says why) without either.
	Allocation    *apply.Allocation
	NoAllocations bool
	// Stream sizes the orders bucket, should a re-apply have to create it.
	Stream events.StreamConfig
	// IngestAdminURL, when set, is ingest's admin listener (e.g.
	// http://127.0.0.1:8081), whose /metrics give the webhooks accepted,
	// duplicate and rejected per minute. IngestToken is its admin token
	// (the same file as Token in the usual setup; empty sends Token).
	IngestAdminURL string
	IngestToken    string
	// SampleEvery is how often the overview's figures are sampled from
	// JetStream and ingest; RefreshEvery how often the overview page
	// reloads itself.
	SampleEvery  time.Duration
	RefreshEvery time.Duration
	// MaxDeadLetters bounds the dead letters the console reads: the
	// newest ones of the last MaxDeadLetters sequences of the stream.
	MaxDeadLetters int
	// RequestTimeout bounds the NATS work of one request.
	RequestTimeout time.Duration
	// Logger gets the console's own log lines.
	Logger zerolog.Logger
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.NATSURL == "" {
		c.NATSURL = DefaultNATSURL
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.SampleEvery == 0 {
		c.SampleEvery = DefaultSampleEvery
	}
	if c.RefreshEvery == 0 {
		c.RefreshEvery = DefaultRefreshEvery
	}
	if c.MaxDeadLetters == 0 {
		c.MaxDeadLetters = DefaultMaxDeadLetters
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.IngestToken == "" {
		c.IngestToken = c.Token
	}
	c.Stream = c.Stream.WithDefaults()
	return c
}

// validate reports the first invalid field by name.
func (c Config) validate() error {
	switch {
	case c.Token == "":
		return errors.New("Token is required: the console shows payments and redrives events, so it is never open")
	case c.Verifier == nil:
		return errors.New("Verifier is required: the timeline verifies every stored signature")
	case c.Allocation != nil && c.NoAllocations:
		return errors.New("Allocation and NoAllocations contradict each other")
	case c.SampleEvery <= 0:
		return fmt.Errorf("SampleEvery must be positive, got %s", c.SampleEvery)
	case c.RefreshEvery < time.Second:
		return fmt.Errorf("RefreshEvery must be at least 1s, got %s", c.RefreshEvery)
	case c.MaxDeadLetters <= 0:
		return fmt.Errorf("MaxDeadLetters must be positive, got %d", c.MaxDeadLetters)
	case c.RequestTimeout <= 0:
		return fmt.Errorf("RequestTimeout must be positive, got %s", c.RequestTimeout)
	}
	if c.IngestAdminURL != "" {
		u, err := url.Parse(c.IngestAdminURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("IngestAdminURL %q: want http(s)://host:port", c.IngestAdminURL)
		}
	}
	if err := c.Stream.Validate(); err != nil {
		return fmt.Errorf("Stream.%w", err)
	}
	return nil
}

// canApply reports whether re-applying is configured.
func (c Config) canApply() bool { return c.Allocation != nil || c.NoAllocations }

// Console is a running console.
type Console struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	index  *Index
	stats  *sampler
	dlq    *dlqCache
	orders atomic.Pointer[events.OrderStore]
	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
	served chan error
	closed sync.Once
}

// Start validates cfg, binds the listener, connects to NATS, starts the
// orders index and the overview's sampler, and serves in the background
// until Shutdown. A busy port or refused credentials fail here.
func Start(ctx context.Context, cfg Config) (_ *Console, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("console config: %w", err)
	}
	c := &Console{cfg: cfg, index: NewIndex(), served: make(chan error, 1)}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("console listen %s: %w", cfg.Listen, err)
	}
	c.nc, err = natsconn.Connect(ctx, natsconn.Options{URL: cfg.NATSURL, Name: "paystream-console", Logger: cfg.Logger, Extra: cfg.NATSOptions, ConnectWait: cfg.ConnectWait})
	if err != nil {
		return nil, err
	}
	if c.js, err = jetstream.New(c.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.stats = newSampler(c.js, cfg)
	c.dlq = &dlqCache{js: c.js, max: cfg.MaxDeadLetters}

	bg, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		c.watchOrders(bg)
	}()
	go func() {
		defer c.wg.Done()
		c.stats.run(bg)
	}()
	c.srv = httpapi.NewServer(c.routes())
	go func() {
		err := c.srv.Serve(c.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		c.served <- err
	}()
	if !httpapi.IsLoopback(cfg.Listen) {
		cfg.Logger.Warn().Str("listen", cfg.Listen).Msg("console listening beyond loopback: put TLS in front of it, the admin token travels in every request")
	}
	cfg.Logger.Info().Str("listen", c.Addr()).Bool("reapply", cfg.canApply()).Str("ingest_admin_url", cfg.IngestAdminURL).Msg("console started")
	return c, nil
}

// Run starts the console and serves until ctx ends, then stops softly.
func Run(ctx context.Context, cfg Config) error {
	c, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-c.served:
		c.close()
		return fmt.Errorf("console: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Shutdown(sctx)
}

// Addr is the bound listen address.
func (c *Console) Addr() string { return c.ln.Addr().String() }

// URL is the console's base URL.
func (c *Console) URL() string { return "http://" + c.Addr() }

// Index is the console's orders index.
func (c *Console) Index() *Index { return c.index }

// Shutdown stops serving (in-flight requests finish within ctx), then the
// background work and the NATS connection.
func (c *Console) Shutdown(ctx context.Context) error {
	err := c.srv.Shutdown(ctx)
	c.close()
	return err
}

func (c *Console) close() {
	c.closed.Do(func() {
		if c.srv != nil {
			_ = c.srv.Close()
		} else if c.ln != nil {
			_ = c.ln.Close()
		}
		if c.cancel != nil {
			c.cancel()
		}
		c.wg.Wait()
		if c.nc != nil {
			c.nc.Close()
		}
	})
}

// orderStore is the orders bucket once the watch bound it, else nil.
func (c *Console) orderStore() *events.OrderStore { return c.orders.Load() }

// errNoBucket is answered until the workers created the orders bucket.
var errNoBucket = fmt.Errorf("orders bucket %s not there yet (the workers create it): %w", events.OrdersBucket, httpapi.ErrUnavailable)
