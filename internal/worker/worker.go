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
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/reconcile"
)

// Defaults for Config.
const (
	DefaultNATSURL       = "nats://127.0.0.1:4222"
	DefaultMetricsListen = "127.0.0.1:9091"
	// DefaultLagInterval is how often consumer lag is polled.
	DefaultLagInterval = 5 * time.Second
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
	Observer func(ctx context.Context, ev events.Event, out handlers.Outcome) error
	// LagInterval is how often consumer lag is polled for the metrics.
	LagInterval time.Duration
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
	// when zero.
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
	c.Stream = c.Stream.WithDefaults()
	c.Consumer = c.Consumer.WithDefaults()
	return c
}

func (c Config) validate() error {
	if c.Verifier == nil {
		return errors.New("Verifier is required: events are re-verified before they change anything")
	}
	if c.Pprof && c.MetricsToken == "" && c.MetricsListen != "-" && !httpapi.IsLoopback(c.MetricsListen) {
		return fmt.Errorf("Pprof on MetricsListen %q, which is not loopback, needs MetricsToken", c.MetricsListen)
	}
	if a := c.Allocation; a != nil && (a.Rules == nil || a.Cobo.Signer == nil) {
		return errors.New("Allocation needs Rules and Cobo.Signer")
	}
	if a := c.Allocation; a != nil {
		if err := a.Reconcile.WithDefaults().Validate(); err != nil {
			return fmt.Errorf("Allocation.Reconcile.%w", err)
		}
	}
	if a := c.Allocation; a != nil && a.BitGo == nil && a.Rules.UsesBitGo() {
		return errors.New("Allocation.BitGo is required: the rules route items to bitgo: destinations")
	}
	if err := c.Stream.Validate(); err != nil {
		return fmt.Errorf("Stream.%w", err)
	}
	if err := c.Consumer.Validate(); err != nil {
		return fmt.Errorf("Consumer.%w", err)
	}
	return nil
}

// Metrics are the worker's business metrics.
type Metrics struct {
	handled        *prometheus.CounterVec
	transitions    *prometheus.CounterVec
	completed      prometheus.Counter
	lateRecorded   prometheus.Counter
	conflictFinals prometheus.Counter
	unclassified   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_worker_events_total", Help: "Events handled, by type and result.",
		}, []string{"type", "result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_order_transitions_total", Help: "Order status changes committed, by new status; summed over workers, final statuses count orders.",
		}, []string{"status"}),
		completed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_orders_completed_total", Help: "Orders seen reaching Completed for the first time.",
		}),
		lateRecorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_late_payments_total", Help: "Late payments recorded at full precision.",
		}),
		conflictFinals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_order_conflicting_finals_total", Help: "Final statuses that contradicted an order's stored final status (kept).",
		}),
		unclassified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_reconcile_unclassified_transactions_total",
			Help: "Transactions recorded on an order without being credited because whether they are late payments is unknown (reason lateness_unknown, ambiguous, no_amount, or before_horizon: a late payment made before the state of its order expired); an operator decides.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.handled, m.transitions, m.completed, m.lateRecorded, m.conflictFinals, m.unclassified)
	// Every series exists from the start at 0, so an alert on its increase
	// fires on the first one.
	for _, r := range []string{domain.UnclassifiedLatenessUnknown, domain.UnclassifiedAmbiguous, domain.UnclassifiedNoAmount, domain.UnclassifiedBeforeHorizon} {
		m.unclassified.WithLabelValues(r)
	}
	return m
}

// typeLabel bounds metric cardinality: unknown types share one label.
func typeLabel(t string) string {
	switch t {
	case cobo.EventOrderStatusUpdated, cobo.EventLegacyStatusUpdated, cobo.EventOrderUpdated,
		cobo.EventTransactionLate, cobo.EventTransactionCompleted:
		return t
	}
	return "other"
}

// Worker is a running worker.
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
	lag          *events.LagCollector
	lagConsumers []jetstream.Consumer
}

// Start connects, waits for the event stream, ensures the dead-letter
// stream, the orders bucket and the consumer, and binds the metrics
// listener. Call Run to process.
func Start(ctx context.Context, cfg Config) (_ *Worker, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	w := &Worker{cfg: cfg}
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ccfg := cfg.Consumer
	ccfg.Logger = cfg.Logger
	ccfg.Metrics = events.NewConsumerMetrics(reg)
	m := newMetrics(reg)
	w.lag, w.lagConsumers = events.NewLagCollector(reg), []jetstream.Consumer{cons}
	var am *allocation.Metrics
	var rules *allocation.Rules
	var orderAPI allocation.OrderGetter
	var client *cobo.Client
	var points jetstream.KeyValue
	if a := cfg.Allocation; a != nil {
		am = allocation.NewMetrics(reg)
		ackWait := a.IntentAckWait
		if ackWait == 0 {
			ackWait = allocation.DefaultIntentAck
		}
		if err = allocation.EnsureResources(ctx, w.js, stream, ackWait); err != nil {
			return nil, err
		}
		// Created even with periodic passes off, so that `worker
		// reconcile` finds it.
		if points, err = reconcile.EnsureBucket(ctx, w.js, stream); err != nil {
			return nil, err
		}
		ccfg := a.Cobo
		ccfg.Observe = am.ObserveCobo
		if client, err = cobo.NewClient(ccfg); err != nil {
			return nil, err
		}
		rules, orderAPI = a.Rules, client
		bcfg := a.Batcher
		bcfg.Logger = cfg.Logger.With().Str("component", "batcher").Logger()
		bcfg.Metrics = am
		bcfg.Retention = stream.Retention.Keep
		if w.batcher, err = allocation.NewBatcher(ctx, w.js, client, w.orders, bcfg); err != nil {
			return nil, err
		}
		swcfg := a.Sweeper
		swcfg.Logger = cfg.Logger.With().Str("component", "sweeper").Logger()
		swcfg.Metrics = am
		swcfg.Retention = stream.Retention.Keep
		if w.sweeper, err = allocation.NewSweeper(ctx, w.js, w.orders, swcfg); err != nil {
			return nil, err
		}
		for _, name := range []string{allocation.BatcherConsumer, allocation.BitGoConsumer} {
			if c, err := w.js.Consumer(ctx, allocation.IntentStream, name); err == nil {
				w.lagConsumers = append(w.lagConsumers, c)
			}
		}
		if a.BitGo != nil {
			bg, err := bitgo.New(*a.BitGo)
			if err != nil {
				return nil, err
			}
			scfg := a.BitGoSender
			scfg.Logger = cfg.Logger.With().Str("component", "bitgo").Logger()
			scfg.Metrics = am
			scfg.Retention = stream.Retention.Keep
			if w.bitgo, err = allocation.NewBitGoSender(ctx, w.js, bg, w.orders, scfg); err != nil {
				return nil, err
			}
		}
	}
	// The per-event path is the Processor, shared with `worker replay
	// -apply`, so that re-applying an event is exactly what a redelivery is.
	p := newProcessor(cfg.Verifier, w.orders, w.js, rules, orderAPI, cfg.Logger)
	p.metrics, p.alloc, p.observer = m, am, cfg.Observer
	if a := cfg.Allocation; a != nil {
		rcfg := a.Reconcile
		rcfg.Logger = cfg.Logger.With().Str("component", "reconcile").Logger()
		rcfg.Metrics = reconcile.NewMetrics(reg)
		rcfg.Retention = stream.Retention
		if w.reconcile, err = reconcile.New(points, client, w.orders, p, rcfg); err != nil {
			return nil, err
		}
	}
	proc := events.ProcessorFunc(func(ctx context.Context, ev events.Event) error {
		_, err := p.Process(ctx, ev)
		return err
	})
	if w.consumer, err = events.NewConsumer(w.js, cons, proc, ccfg); err != nil {
		return nil, err
	}
	if w.metricsLn != nil {
		w.metrics = httpapi.NewServer(admin.NewRouter(admin.Config{Ready: w.ready, Gatherer: reg, Pprof: cfg.Pprof, Token: cfg.MetricsToken}))
		go func() { _ = w.metrics.Serve(w.metricsLn) }()
	}
	return w, nil
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

func (w *Worker) ready(ctx context.Context) error {
	if w.nc.Status() != nats.CONNECTED {
		return fmt.Errorf("nats is %s", w.nc.Status())
	}
	_, err := w.js.Stream(ctx, events.StreamName)
	return err
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

// Run processes events until ctx is done, then finishes or hands back
// in-flight events and drains the connection.
func (w *Worker) Run(ctx context.Context) error {
	w.cfg.Logger.Info().Str("metrics_listen", w.MetricsAddr()).Bool("allocations", w.batcher != nil).Msg("worker started")
	lagCtx, stopLag := context.WithCancel(ctx)
	lagDone := make(chan struct{})
	go func() {
		defer close(lagDone)
		w.lag.Poll(lagCtx, w.cfg.LagInterval, w.cfg.Logger, w.lagConsumers...)
	}()
	batcherDone := make(chan error, 1)
	if w.batcher != nil {
		go func() { batcherDone <- w.batcher.Run(ctx) }()
	} else {
		batcherDone <- nil
	}
	bitgoDone := make(chan error, 1)
	if w.bitgo != nil {
		go func() { bitgoDone <- w.bitgo.Run(ctx) }()
	} else {
		bitgoDone <- nil
	}
	sweeperDone := make(chan error, 1)
	if w.sweeper != nil {
		go func() { sweeperDone <- w.sweeper.Run(ctx) }()
	} else {
		sweeperDone <- nil
	}
	reconcileDone := make(chan error, 1)
	switch {
	case w.reconcile == nil:
		w.cfg.Logger.Info().Msg("reconciliation with Cobo is off: this worker has no Cobo API credentials (-rules and -cobo-api-secret-file)")
		reconcileDone <- nil
	case w.reconcile.Config().Off:
		w.cfg.Logger.Info().Msg("reconciliation with Cobo is off (-reconcile-every 0); worker reconcile runs a pass by hand")
		reconcileDone <- nil
	default:
		w.cfg.Logger.Info().Dur("every", w.reconcile.Config().Every).Dur("overlap", w.reconcile.Config().Overlap).Msg("reconciliation with Cobo is on")
		go func() { reconcileDone <- w.reconcile.Run(ctx) }()
	}
	err := errors.Join(w.consumer.Run(ctx), <-batcherDone, <-bitgoDone, <-sweeperDone, <-reconcileDone)
	w.cfg.Logger.Info().Msg("worker stopping")
	stopLag()
	<-lagDone
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
	if w.nc != nil && !w.nc.IsClosed() {
		_ = w.nc.Drain()
		for i := 0; i < 100 && !w.nc.IsClosed(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		w.nc.Close()
	}
}

// Run starts a worker and processes until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	w, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
