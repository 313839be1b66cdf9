package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/domain"
)

// ErrConsumerGone means a durable consumer this process pulls from no
// longer exists (someone deleted it): nothing will be delivered to the
// process any more, so it should end and be restarted, which creates the
// consumer again.
var ErrConsumerGone = errors.New("durable consumer gone")

// Processor processes one event. It must be idempotent: an event may be
// delivered more than once. An error wrapping domain.ErrInvalid sends the
// event to the dead-letter stream at once; other errors are retried.
type Processor interface {
	Process(ctx context.Context, ev Event) error
}

// Defaults for ConsumerConfig.
const (
	DefaultConcurrency = 16
	DefaultMaxDeliver  = 8
	// DefaultAckWait is how long an event held by a worker that died
	// waits before the server hands it to another: the recovery time of
	// a crash. Workers mark the events they handle in progress every
	// third of it (InProgressEvery), so it bounds no handler: it only
	// has to outlast two lost or late marks (a pause of the process, a
	// slow network) with room to spare.
	DefaultAckWait       = 5 * time.Second
	DefaultBackoffBase   = 500 * time.Millisecond
	DefaultBackoffMax    = 30 * time.Second
	DefaultHandleTimeout = 20 * time.Second
	DefaultStopGrace     = 2 * time.Second
)

// DefaultPullMaxPerHandler is how many messages a worker buffers ahead per
// handler when ConsumerConfig.PullMax is not set: two, so that a buffered
// message waits about three handler runs before a handler takes it, within
// the default 5 s ack wait while handler runs (mostly Cobo calls) take
// under 1.7 s. 256 for 16 handlers, before, made that 0.3 s. Handlers
// slower than that still get buffered messages redelivered; only pulling
// no more than the idle handlers take would end it. 32 also drains faster
// than 256 here (benchrun).
const DefaultPullMaxPerHandler = 2

// ConsumerConfig configures a Consumer. All workers should use the same
// AckWait, since it is part of the shared durable consumer: the last
// worker to start sets it (EnsureConsumer).
type ConsumerConfig struct {
	// Concurrency is how many events one worker processes at once.
	Concurrency int
	// MaxDeliver is how many deliveries an event gets before it is
	// dead-lettered.
	MaxDeliver int
	// AckWait is how long the server waits for an ack, or for a mark that
	// the event is still in progress, before redelivering it, e.g. after a
	// worker crashed. While Process runs the consumer marks the event in
	// progress every AckWait/3, so a handler may run longer than AckWait.
	AckWait time.Duration
	// BackoffBase and BackoffMax bound the redelivery delay after a failure,
	// which doubles per delivery.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// HandleTimeout bounds one Process call (its context's deadline). It
	// may exceed AckWait: the event is marked in progress while Process
	// runs, and only until HandleTimeout, so a Process that ignores its
	// deadline loses the event to redelivery one AckWait later.
	HandleTimeout time.Duration
	// PullMax is how many messages a worker buffers ahead (default
	// DefaultPullMaxPerHandler per handler). A buffered message is not
	// marked in progress: it reaches a handler after about
	// PullMax/Concurrency + 1 handler runs, and if that is longer than the
	// ack wait it is redelivered meanwhile, a delivery that counts towards
	// MaxDeliver.
	PullMax int
	// StopGrace bounds the soft stop's wait for the pull to drain.
	StopGrace time.Duration
	// Logger gets a line per failure and dead letter.
	Logger zerolog.Logger
	// Metrics, when set, records consumer metrics.
	Metrics *ConsumerMetrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c ConsumerConfig) WithDefaults() ConsumerConfig {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.HandleTimeout == 0 {
		c.HandleTimeout = DefaultHandleTimeout
	}
	if c.PullMax == 0 {
		c.PullMax = DefaultPullMaxPerHandler * c.Concurrency
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	return c
}

// Validate reports the first invalid field by name.
func (c ConsumerConfig) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("Concurrency must be at least 1, got %d", c.Concurrency)
	case c.MaxDeliver < 1:
		return fmt.Errorf("MaxDeliver must be at least 1, got %d", c.MaxDeliver)
	case c.AckWait < time.Second:
		return fmt.Errorf("AckWait must be at least 1s, got %s", c.AckWait)
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("BackoffBase must be positive and at most BackoffMax, got %s and %s", c.BackoffBase, c.BackoffMax)
	case c.HandleTimeout <= 0:
		return fmt.Errorf("HandleTimeout must be positive, got %s", c.HandleTimeout)
	case c.PullMax < 1:
		return fmt.Errorf("PullMax must be at least 1, got %d", c.PullMax)
	}
	return nil
}

// EnsureConsumer creates or updates the shared durable pull consumer,
// with cfg's AckWait: a worker started with another ack wait (an upgrade
// from the 30 s of earlier versions) sets it for every worker. Redelivery is bounded by the worker (see ConsumerConfig.MaxDeliver), not
// the server, so that exhausted events land in the dead-letter stream
// instead of being skipped. An existing one is updated (see EnsureDurable).
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (jetstream.Consumer, error) {
	cfg = cfg.WithDefaults()
	return EnsureDurable(ctx, js, StreamName, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "paystream workers: order state and allocations",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 20000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: SubjectPrefix + ".>",
	})
}

// Consumer runs a Processor over the shared durable consumer. Any number of
// Consumers, in any number of processes, share the work.
type Consumer struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
	proc Processor
	cfg  ConsumerConfig
	// markEvery is how often an event being processed is marked in
	// progress.
	markEvery time.Duration
}

// NewConsumer returns a Consumer of cons that processes with proc and
// dead-letters through js.
func NewConsumer(js jetstream.JetStream, cons jetstream.Consumer, proc Processor, cfg ConsumerConfig) (*Consumer, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consumer config: %w", err)
	}
	// The durable's own ack wait is the one the server applies; another
	// worker may have set a shorter one than ours.
	ackWait := cfg.AckWait
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		ackWait = min(ackWait, info.Config.AckWait)
	}
	return &Consumer{js: js, cons: cons, proc: proc, cfg: cfg, markEvery: InProgressEvery(ackWait)}, nil
}

// Run processes events until ctx is done, then stops softly: it stops
// pulling, hands buffered messages back to the server, and waits for the
// in-flight ones to finish (each bounded by HandleTimeout). It returns
// earlier, with an error, only when the pull cannot go on: the durable
// consumer was deleted (the error wraps ErrConsumerGone) or the
// connection was closed. Then, and whenever the connection is closed by
// the time it ends, the in-flight events' contexts are cancelled before it
// waits for them: their answers could not reach the server anyway, and the
// events are redelivered.
func (c *Consumer) Run(ctx context.Context) (err error) {
	// Short pull expiry and heartbeats let a worker notice a lost pull
	// request (server restart, leader change) in about two seconds instead
	// of the client's 30-second default.
	it, err := c.cons.Messages(jetstream.PullMaxMessages(c.cfg.PullMax), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("consume %s: %w", ConsumerName, err)
	}
	go func() {
		<-ctx.Done()
		it.Drain()
	}()

	// The handlers' contexts are not ctx: a soft stop lets them finish.
	hctx, cancelHandlers := context.WithCancel(context.Background())
	defer cancelHandlers()
	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range c.cfg.Concurrency {
		wg.Go(func() {
			for msg := range work {
				c.handle(hctx, msg)
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	defer func() {
		if err != nil || c.js.Conn().IsClosed() {
			cancelHandlers()
		}
	}()

	var stopBy time.Time
	for {
		// Next is bounded so that the stop grace is enforced here: a
		// drain waits for the outstanding pull to end, which after a
		// reconnect can take a whole pull expiry. Past the grace, what is
		// still unacked is redelivered after AckWait.
		msg, err := it.Next(jetstream.NextMaxWait(250 * time.Millisecond))
		if ctx.Err() != nil {
			if stopBy.IsZero() {
				stopBy = time.Now().Add(c.cfg.StopGrace)
			} else if time.Now().After(stopBy) {
				it.Stop()
				if msg != nil {
					_ = msg.Nak()
				}
				return nil
			}
		}
		if err != nil {
			switch {
			case errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil:
				return nil
			case errors.Is(err, jetstream.ErrMsgIteratorClosed):
				return fmt.Errorf("consume %s: %w", ConsumerName, err)
			case errors.Is(err, jetstream.ErrConsumerDeleted):
				// The iterator has stopped for good; pulling from a
				// consumer recreated meanwhile would need a new one, and
				// a restart makes it.
				return fmt.Errorf("consume %s: %w: %w", ConsumerName, ErrConsumerGone, err)
			case errors.Is(err, nats.ErrTimeout):
				continue
			}
			// Heartbeat loss or a reconnect: the iterator recovers itself.
			c.cfg.Logger.Warn().Err(err).Msg("consumer pull interrupted")
			continue
		}
		if ctx.Err() != nil {
			// Drained after a stop: give it back for another worker now
			// rather than after AckWait.
			_ = msg.Nak()
			continue
		}
		select {
		case work <- msg:
		case <-ctx.Done():
			// Stopped while every handler is busy (handlers may run up
			// to HandleTimeout): given back as above.
			_ = msg.Nak()
		}
	}
}

func (c *Consumer) handle(hctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	ev, err := DecodeMsg(msg)
	id, order, typ := ev.EventID, ev.OrderID, ev.Type
	if err != nil {
		// The body is unreadable, but the message id and ingest's headers
		// still name the event in the log.
		h := msg.Headers()
		id, order, typ = h.Get(jetstream.MsgIDHeader), h.Get(HeaderOrderID), h.Get(HeaderEventType)
	}
	// Built only for the paths that log: an event that succeeds logs
	// nothing, and the logger's context costs an allocation.
	log := func() zerolog.Logger {
		return c.cfg.Logger.With().Uint64("seq", ev.Seq).Str("event_id", id).Str("order_id", order).Str("type", typ).Logger()
	}
	if err != nil {
		c.deadLetter(msg, ev, log(), "unparseable", err.Error())
		return
	}
	if ev.NumDelivered > 1 && c.cfg.Metrics != nil {
		c.cfg.Metrics.redeliveries.Inc()
	}
	if ev.NumDelivered > uint64(c.cfg.MaxDeliver) {
		// Only reached when earlier deliveries never answered, e.g. the
		// event crashed its workers.
		c.deadLetter(msg, ev, log(), "max_deliveries", fmt.Sprintf("delivered %d times without an answer", ev.NumDelivered))
		return
	}

	ctx, cancel := context.WithTimeout(hctx, c.cfg.HandleTimeout)
	// Marked in progress while it is processed, so that a slow handler
	// (a Cobo call and its retries) is not redelivered to another worker
	// meanwhile; stopped before the answer below.
	deadline, _ := ctx.Deadline()
	stopMarks := KeepInProgress(msg, c.markEvery, deadline)
	err = c.proc.Process(ctx, ev)
	stopMarks()
	cancel()
	if m := c.cfg.Metrics; m != nil {
		m.handleLatency.Observe(time.Since(start).Seconds())
	}
	switch {
	case err == nil:
		if err := msg.Ack(); err != nil {
			log := log()
			log.Warn().Err(err).Msg("ack failed; the event will be redelivered and handled idempotently")
		}
	case errors.Is(err, domain.ErrInvalid):
		c.deadLetter(msg, ev, log(), refusedKind(err), err.Error())
	case ev.NumDelivered >= uint64(c.cfg.MaxDeliver):
		kind := "max_deliveries"
		if errors.Is(err, domain.ErrUnconfirmed) {
			kind = "unconfirmed"
		}
		c.deadLetter(msg, ev, log(), kind, fmt.Sprintf("failed %d deliveries, last: %v", ev.NumDelivered, err))
	default:
		delay := c.retryDelay(ev.NumDelivered)
		log := log()
		log.Warn().Err(err).Uint64("delivery", ev.NumDelivered).Dur("retry_in", delay).Msg("event failed; will retry")
		_ = msg.NakWithDelay(delay)
	}
}

// refusedKind is the dead-letter reason of an event that can never be
// applied: the metric label and the reason's first word.
func refusedKind(err error) string {
	switch {
	case errors.Is(err, domain.ErrUntrusted):
		return "untrusted"
	case errors.Is(err, domain.ErrUnknownOrder):
		return "unknown_order"
	}
	return "invalid"
}

// deadLetter stores the event on the DLQ stream with the reason, then
// terminates it. When the DLQ cannot be written the event is retried later,
// so nothing is dropped.
func (c *Consumer) deadLetter(msg jetstream.Msg, ev Event, log zerolog.Logger, kind, reason string) {
	dl := nats.NewMsg(DLQSubjectPrefix + "." + TypeToken(ev.Type) + "." + Token(ev.OrderID))
	if ev.Type == "" {
		dl.Subject = DLQSubjectPrefix + ".unparseable." + NoOrderToken
	}
	dl.Data = msg.Data()
	for k, v := range msg.Headers() {
		// An event stored in an atomic batch keeps the batch's headers;
		// copied, they would make this publish a batch message, which the
		// dead-letter stream refuses.
		if k != jetstream.MsgIDHeader && !IsBatchHeader(k) {
			dl.Header[k] = v
		}
	}
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" {
		dl.Header.Set(HeaderDLQOrigMsgID, id)
	}
	dl.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%d-%d", ev.Seq, ev.NumDelivered))
	dl.Header.Set(HeaderDLQReason, kind+": "+reason)
	dl.Header.Set(HeaderDLQDeliveries, itoa(ev.NumDelivered))
	dl.Header.Set(HeaderDLQOrigSeq, itoa(ev.Seq))
	dl.Header.Set(HeaderDLQAt, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandleTimeout)
	defer cancel()
	if _, err := c.js.PublishMsg(ctx, dl, jetstream.WithExpectStream(DLQStreamName)); err != nil {
		log.Error().Err(err).Str("reason", reason).Msg("dead-letter publish failed; will retry")
		_ = msg.NakWithDelay(c.retryDelay(ev.NumDelivered))
		return
	}
	if err := msg.Term(); err != nil {
		log.Warn().Err(err).Msg("term after dead-letter failed")
	}
	if m := c.cfg.Metrics; m != nil {
		m.deadLetters.WithLabelValues(kind).Inc()
	}
	log.Error().Str("reason", reason).Uint64("deliveries", ev.NumDelivered).Msg("event dead-lettered")
}

// retryDelay is the delay before delivery n+1 of a failed event:
// BackoffBase doubled per delivery, capped at BackoffMax, with up to 20%
// jitter so that retries of a burst spread out.
func (c *Consumer) retryDelay(n uint64) time.Duration {
	return backoff.Policy{Base: c.cfg.BackoffBase, Max: c.cfg.BackoffMax, Jitter: backoff.AddFifth}.Delay(int(min(n, 64)))
}

// ConsumerMetrics are the consumer loop's Prometheus metrics.
type ConsumerMetrics struct {
	redeliveries  prometheus.Counter
	deadLetters   *prometheus.CounterVec
	handleLatency prometheus.Histogram
}

// NewConsumerMetrics registers the consumer metrics on reg.
func NewConsumerMetrics(reg prometheus.Registerer) *ConsumerMetrics {
	m := &ConsumerMetrics{
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_worker_redeliveries_total", Help: "Events delivered more than once.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_worker_dead_letters_total", Help: "Events moved to the dead-letter stream, by reason.",
		}, []string{"reason"}),
		handleLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "paystream_worker_handle_seconds", Help: "Time to process one event, decode to commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	reg.MustRegister(m.redeliveries, m.deadLetters, m.handleLatency)
	return m
}
