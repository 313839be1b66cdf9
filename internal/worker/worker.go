// Package worker assembles a worker process: it consumes the event stream
// with the shared durable consumer, applies the business rules to order
// state, and serves its own health and metrics.
package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/admin"
	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/supervise"
)

// Defaults for Config.
const (
	DefaultNATSURL       = "nats://127.0.0.1:4222"
	DefaultMetricsListen = "127.0.0.1:9091"
	// DefaultLagInterval is how often consumer lag is polled, and the
	// durable consumers' existence checked.
	DefaultLagInterval = 5 * time.Second
	// DefaultStopTimeout bounds the soft stop: the consumer's StopGrace
	// and one HandleTimeout, with room to spare.
	DefaultStopTimeout = 30 * time.Second
)

// Config configures a worker.
type Config struct {
	// NATSURL is the NATS server list.
	NATSURL string
	// NATSOptions are extra connection options (credentials, TLS, or an
	// in-process server for tests).
	NATSOptions []nats.Option
	// MetricsListen serves /metrics, /healthz and /readyz. "-" disables it.
	MetricsListen string
	// MetricsToken, when set, is required as a Bearer token on
	// MetricsListen, except by the probes /healthz and /readyz.
	MetricsToken string
	// Stream sizes the dead-letter stream and the orders bucket.
	Stream events.StreamConfig
	// Consumer tunes consumption, retries and dead-lettering.
	Consumer events.ConsumerConfig
	// Verifier holds the trusted Cobo webhook keys; every event's stored
	// signature is checked against them before it changes anything.
	// Required.
	Verifier *cobo.Verifier
	// StreamWait bounds the wait for ingest to create the event stream.
	StreamWait time.Duration
	// ConnectWait bounds the wait for NATS to answer at start-up
	// (cli.DefaultConnectWait when zero), so that processes can start in
	// any order.
	ConnectWait time.Duration
	// Logger receives the worker's logs.
	Logger zerolog.Logger
	// Observer, when set, sees every committed outcome (tests).
	Observer apply.Observer
	// LagInterval is how often consumer lag is polled for the metrics; the
	// same polls find a durable consumer that was deleted.
	LagInterval time.Duration
	// StopTimeout bounds the soft stop of the components; past it the
	// connection is closed under them.
	StopTimeout time.Duration
	// Pprof serves /debug/pprof/ on MetricsListen.
	Pprof bool
	// Allocation, when set, plans allocations by its rules and delivers
	// them exactly once.
	Allocation *AllocationConfig
}

// AllocationConfig configures the allocation side of a worker.
type AllocationConfig struct {
	// Rules decide the items. Required.
	Rules *allocation.Rules
	// Cobo configures the Cobo API client; its Observe hook is set to the
	// worker's metrics.
	Cobo cobo.ClientConfig
	// Batcher tunes batching and recovery.
	Batcher allocation.BatcherConfig
	// BitGo configures the BitGo client. Required when a rule routes to
	// "bitgo:<connectionId>".
	BitGo *bitgo.Config
	// BitGoSender tunes BitGo delivery.
	BitGoSender allocation.BitGoSenderConfig
	// IntentAckWait is how long an allocation intent held by a dead
	// process waits before another takes it; allocation.DefaultIntentAck
	// when zero. Intents held by a live process are marked in progress
	// every third of it, however long their send takes.
	IntentAckWait time.Duration
	// Sweeper tunes the sweep that publishes again the intents of items
	// left planned (OrphanAfter, allocation.DefaultOrphanAfter when zero).
	Sweeper allocation.SweeperConfig
	// Reconcile tunes reconciliation with Cobo's order list, which every
	// worker with Cobo API credentials runs (reconcile.DefaultEvery when
	// Every is zero; Off turns the periodic passes off).
	Reconcile reconcile.Config
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.NATSURL == "" {
		c.NATSURL = DefaultNATSURL
	}
	if c.MetricsListen == "" {
		c.MetricsListen = DefaultMetricsListen
	}
	if c.StreamWait == 0 {
		c.StreamWait = 2 * time.Minute
	}
	if c.ConnectWait == 0 {
		c.ConnectWait = 2 * time.Minute
	}
	if c.LagInterval == 0 {
		c.LagInterval = DefaultLagInterval
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	c.Stream = c.Stream.WithDefaults()
	c.Consumer = c.Consumer.WithDefaults()
	return c
}

// ConfigError is a Config that Start refused before connecting anywhere.
// It is the apply core's type, one for both configurations: its message
// names the field at fault; Field is the part of Config it is in (e.g.
// "Consumer", "Allocation.Batcher"), for a command to name the flags that
// set it.
type ConfigError = apply.ConfigError

// validate checks c with the checks of each part's own package, so that a
// bad part is refused before Start connects anywhere.
func (c Config) validate() error {
	// What the apply core needs is its own to check; its errors name the
	// same fields as Config has, as a *ConfigError.
	if err := c.applyConfig().Validate(); err != nil {
		return err
	}
	if c.Pprof && c.MetricsToken == "" && c.MetricsListen != "-" && !httpapi.IsLoopback(c.MetricsListen) {
		return &ConfigError{Field: "Pprof", Err: fmt.Errorf("Pprof on MetricsListen %q, which is not loopback, needs MetricsToken", c.MetricsListen)}
	}
	if c.LagInterval <= 0 || c.StopTimeout <= 0 {
		return &ConfigError{Field: "LagInterval", Err: fmt.Errorf("LagInterval and StopTimeout must be positive, got %s and %s", c.LagInterval, c.StopTimeout)}
	}
	if err := c.Stream.Validate(); err != nil {
		return &ConfigError{Field: "Stream", Err: fmt.Errorf("Stream.%w", err)}
	}
	if err := c.Consumer.Validate(); err != nil {
		return &ConfigError{Field: "Consumer", Err: fmt.Errorf("Consumer.%w", err)}
	}
	a := c.Allocation
	if a == nil {
		return nil
	}
	if a.BitGo == nil && a.Rules.UsesBitGo() {
		return &ConfigError{Field: "Allocation.BitGo", Err: errors.New("Allocation.BitGo is required: the rules route items to bitgo: destinations")}
	}
	for _, part := range []struct {
		field string
		err   error
	}{
		{"Allocation.Batcher", a.Batcher.WithDefaults().Validate()},
		{"Allocation.BitGoSender", a.BitGoSender.WithDefaults().Validate()},
		{"Allocation.Sweeper", a.Sweeper.WithDefaults().Validate()},
		{"Allocation.Reconcile", a.Reconcile.WithDefaults().Validate()},
	} {
		if part.err != nil {
			return &ConfigError{Field: part.field, Err: fmt.Errorf("%s.%w", part.field, part.err)}
		}
	}
	return nil
}

// applyConfig is the apply core's part of the configuration, without the
// metrics Start adds.
func (c Config) applyConfig() apply.Config {
	return apply.Config{Verifier: c.Verifier, Allocation: c.Allocation.Plan(), Logger: c.Logger, Observer: c.Observer}
}

// Plan is what the apply core plans allocations with: the rules and the
// Cobo API client config, as `worker replay -apply` must be given them
// (replay.Config.Allocation). It is nil when a is.
func (a *AllocationConfig) Plan() *apply.Allocation {
	if a == nil {
		return nil
	}
	return &apply.Allocation{Rules: a.Rules, Cobo: a.Cobo}
}

// Worker is a running worker. Its components (the event consumer, and
// with rules the batcher, the BitGo sender, the orphan sweeper and the
// reconciler, and always the lag poller) run under one supervision group:
// see Run.
type Worker struct {
	cfg       Config
	batcher   *allocation.Batcher
	bitgo     *allocation.BitGoSender
	sweeper   *allocation.Sweeper
	reconcile *reconcile.Reconciler
	nc        *nats.Conn
	js        jetstream.JetStream
	consumer  *events.Consumer
	orders    *events.OrderStore
	metricsLn net.Listener
	metrics   *http.Server
	// lag polls how far behind the shared consumers are.
	lag        *events.LagCollector
	lagTargets []events.LagTarget
	// group supervises the components; /readyz asks it.
	group *supervise.Group
}

// Start checks cfg and builds the API clients, then binds the metrics
// listener, connects, waits for the event stream, and ensures the
// dead-letter stream, the orders bucket, the consumers and, with rules,
// the allocation resources. Call Run to process. A config it refuses
// before connecting anywhere comes back as a *ConfigError.
func Start(ctx context.Context, cfg Config) (_ *Worker, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	w := &Worker{cfg: cfg, group: supervise.New(cfg.Logger)}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	acfg := cfg.applyConfig()
	acfg.Metrics = apply.NewMetrics(reg)
	// The clients are built before anything connects, so that a bad URL or
	// credential is refused at once rather than after the connect wait.
	var client *cobo.Client
	var bg *bitgo.Client
	if a := cfg.Allocation; a != nil {
		acfg.AllocMetrics = allocation.NewMetrics(reg)
		// The apply core reads orders with a client of its own, observed
		// by the same metrics.
		acfg.Allocation.Cobo.Observe = acfg.AllocMetrics.ObserveCobo
		if client, err = cobo.NewClient(acfg.Allocation.Cobo); err != nil {
			return nil, fmt.Errorf("worker config: %w", &ConfigError{Field: "Allocation.Cobo", Err: fmt.Errorf("Allocation.Cobo: %w", err)})
		}
		if a.BitGo != nil {
			if bg, err = bitgo.New(*a.BitGo); err != nil {
				return nil, fmt.Errorf("worker config: %w", &ConfigError{Field: "Allocation.BitGo", Err: fmt.Errorf("Allocation.BitGo: %w", err)})
			}
		}
	}

	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if cfg.MetricsListen != "-" {
		if w.metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("metrics listen %s: %w", cfg.MetricsListen, err)
		}
	}
	if w.nc, err = natsconn.Connect(ctx, natsconn.Options{URL: cfg.NATSURL, Name: "paystream-worker", Logger: cfg.Logger, Extra: cfg.NATSOptions, ConnectWait: cfg.ConnectWait}); err != nil {
		return nil, err
	}
	if w.js, err = jetstream.New(w.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err = w.waitForStream(ctx); err != nil {
		return nil, err
	}
	if err = events.CheckRetention(ctx, w.js, cfg.Stream.Retention); err != nil {
		return nil, fmt.Errorf("worker config: Stream.Retention: %w", err)
	}
	stream := cfg.Stream
	stream.Logger = cfg.Logger
	if _, err = events.EnsureDLQStream(ctx, w.js, stream); err != nil {
		return nil, err
	}
	kv, err := events.EnsureOrdersBucket(ctx, w.js, stream)
	if err != nil {
		return nil, err
	}
	if w.orders, err = events.OpenOrderStore(ctx, w.js, kv, stream); err != nil {
		return nil, err
	}
	cons, err := events.EnsureConsumer(ctx, w.js, cfg.Consumer)
	if err != nil {
		return nil, err
	}
	w.lag, w.lagTargets = events.NewLagCollector(reg), []events.LagTarget{{Consumer: cons, Pulled: true}}
	if a := cfg.Allocation; a != nil {
		if err = w.startAllocation(ctx, a, client, bg, acfg.AllocMetrics); err != nil {
			return nil, err
		}
	}
	// The per-event path is the apply core, shared with `worker replay
	// -apply`, so that re-applying an event is exactly what a redelivery is.
	proc, err := apply.New(w.js, w.orders, acfg)
	if err != nil {
		return nil, err
	}
	if a := cfg.Allocation; a != nil {
		// Created even with periodic passes off, so that `worker
		// reconcile` finds it.
		points, err := reconcile.EnsureBucket(ctx, w.js, stream)
		if err != nil {
			return nil, err
		}
		rcfg := a.Reconcile
		rcfg.Logger = cfg.Logger.With().Str("component", "reconcile").Logger()
		rcfg.Metrics = reconcile.NewMetrics(reg)
		rcfg.Retention = w.cfg.Stream.Retention
		if w.reconcile, err = reconcile.New(points, client, w.orders, proc, rcfg); err != nil {
			return nil, err
		}
	}
	ccfg := cfg.Consumer
	ccfg.Logger = cfg.Logger
	ccfg.Metrics = events.NewConsumerMetrics(reg)
	if w.consumer, err = events.NewConsumer(w.js, cons, proc, ccfg); err != nil {
		return nil, err
	}
	w.supervise()
	if w.metricsLn != nil {
		w.metrics = httpapi.NewServer(admin.NewRouter(admin.Config{Ready: w.Ready, Gatherer: reg, Pprof: cfg.Pprof, Token: cfg.MetricsToken}))
		go func() { _ = w.metrics.Serve(w.metricsLn) }()
	}
	return w, nil
}

// startAllocation ensures the allocation resources and builds the
// batcher, the orphan sweeper and, with BitGo, the BitGo sender.
func (w *Worker) startAllocation(ctx context.Context, a *AllocationConfig, client *cobo.Client, bg *bitgo.Client, am *allocation.Metrics) error {
	log := w.cfg.Logger
	stream := w.cfg.Stream
	stream.Logger = log
	ackWait := a.IntentAckWait
	if ackWait == 0 {
		ackWait = allocation.DefaultIntentAck
	}
	if err := allocation.EnsureResources(ctx, w.js, stream, ackWait); err != nil {
		return err
	}
	var err error
	bcfg := a.Batcher
	bcfg.Logger = log.With().Str("component", "batcher").Logger()
	bcfg.Metrics = am
	bcfg.Retention = stream.Retention.Keep
	if w.batcher, err = allocation.NewBatcher(ctx, w.js, client, w.orders, bcfg); err != nil {
		return err
	}
	swcfg := a.Sweeper
	swcfg.Logger = log.With().Str("component", "sweeper").Logger()
	swcfg.Metrics = am
	swcfg.Retention = stream.Retention.Keep
	if w.sweeper, err = allocation.NewSweeper(ctx, w.js, w.orders, swcfg); err != nil {
		return err
	}
	for _, name := range []string{allocation.BatcherConsumer, allocation.BitGoConsumer} {
		if c, err := w.js.Consumer(ctx, allocation.IntentStream, name); err == nil {
			// Every worker with rules exports the lag of both; only what
			// it pulls from ends it when gone.
			w.lagTargets = append(w.lagTargets, events.LagTarget{Consumer: c, Pulled: name == allocation.BatcherConsumer || bg != nil})
		}
	}
	if bg == nil {
		return nil
	}
	scfg := a.BitGoSender
	scfg.Logger = log.With().Str("component", "bitgo").Logger()
	scfg.Metrics = am
	scfg.Retention = stream.Retention.Keep
	w.bitgo, err = allocation.NewBitGoSender(ctx, w.js, bg, w.orders, scfg)
	return err
}

func (w *Worker) waitForStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.StreamWait)
	defer cancel()
	for logged := false; ; {
		// Each look-up gets its own short deadline: while a new replicated
		// stream elects its first leader, the server may leave a look-up
		// unanswered, and one such request must not use up the whole wait.
		lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := w.js.Stream(lctx, events.StreamName)
		lcancel()
		if err == nil {
			return nil
		}
		if !logged {
			w.cfg.Logger.Info().Err(err).Msg("waiting for ingest to create the event stream")
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("event stream %s: %w (is ingest running?)", events.StreamName, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Ready is what /readyz answers: nil while every component runs, NATS is
// connected and the event stream answers. Before Run has started the
// components its error wraps supervise.ErrNotStarted, and once one has
// ended supervise.ErrNotRunning.
func (w *Worker) Ready(ctx context.Context) error {
	if err := w.group.Alive(); err != nil {
		return err
	}
	if w.nc.Status() != nats.CONNECTED {
		return fmt.Errorf("nats is %s", w.nc.Status())
	}
	_, err := w.js.Stream(ctx, events.StreamName)
	return err
}

// supervise adds the worker's components to its group.
func (w *Worker) supervise() {
	log := w.cfg.Logger
	w.group.Add("consumer", w.consumer.Run)
	w.group.Add("lag poller", func(ctx context.Context) error {
		return w.lag.Poll(ctx, w.cfg.LagInterval, log, w.lagTargets...)
	})
	if w.batcher != nil {
		w.group.Add("batcher", w.batcher.Run)
		w.group.Add("orphan sweeper", w.sweeper.Run)
	}
	if w.bitgo != nil {
		w.group.Add("bitgo sender", w.bitgo.Run)
	}
	switch {
	case w.reconcile == nil:
		log.Info().Msg("reconciliation with Cobo is off: this worker has no Cobo API credentials (-rules and -cobo-api-secret-file)")
	case w.reconcile.Config().Off:
		// Not a component: its Run would return at once.
		log.Info().Msg("reconciliation with Cobo is off (-reconcile-every 0); worker reconcile runs a pass by hand")
	default:
		log.Info().Dur("every", w.reconcile.Config().Every).Dur("overlap", w.reconcile.Config().Overlap).Msg("reconciliation with Cobo is on")
		w.group.Add("reconciler", w.reconcile.Run)
	}
}

// Reconciler returns the worker's reconciler, nil without Cobo API
// credentials. Its Pass runs a pass at once, whatever its schedule.
func (w *Worker) Reconciler() *reconcile.Reconciler { return w.reconcile }

// Orders returns the worker's view of the orders bucket.
func (w *Worker) Orders() *events.OrderStore { return w.orders }

// MetricsAddr is the bound metrics address, or "" when disabled.
func (w *Worker) MetricsAddr() string {
	if w.metricsLn == nil {
		return ""
	}
	return w.metricsLn.Addr().String()
}

// Run runs the worker's components until ctx is done, then stops softly:
// the consumer finishes or hands back in-flight events, the others stop
// where they can resume, and the connection is drained. A component that
// has not stopped after StopTimeout is stopped hard, by closing the
// connection under it.
//
// A component that ends while ctx is not done (the durable consumer was
// deleted, a component failed for good) stops the others the same way,
// and Run returns an error wrapping supervise.ErrEnded that names it: the
// process exits non-zero, and its supervisor restarts it, which recreates
// what was missing. From the moment any component has ended, /readyz
// answers 503.
func (w *Worker) Run(ctx context.Context) error {
	w.cfg.Logger.Info().Str("metrics_listen", w.MetricsAddr()).Bool("allocations", w.batcher != nil).
		Strs("components", w.group.Names()).Msg("worker started")
	err := w.group.Run(ctx, w.cfg.StopTimeout)
	if err != nil {
		w.cfg.Logger.Error().Err(err).Msg("worker stopping")
	} else {
		w.cfg.Logger.Info().Msg("worker stopping")
	}
	w.close()
	return err
}

// Kill drops the connection without acking or draining, as a crash would.
// Tests use it.
func (w *Worker) Kill() {
	w.nc.Close()
	if w.metrics != nil {
		_ = w.metrics.Close()
	}
}

func (w *Worker) close() {
	if w.metrics != nil {
		_ = w.metrics.Close()
	}
	natsconn.Drain(w.nc, natsconn.DefaultDrainWait)
}

// Run starts a worker and processes until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	w, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
