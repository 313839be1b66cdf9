package events_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/testutil"
)

// countingProc counts each Process call by event id and worker, and runs
// the test's behaviour.
type countingProc struct {
	name string
	mu   *sync.Mutex
	seen map[string][]string // event id -> the workers it was delivered to
	run  func(ctx context.Context, ev events.Event) error
}

func (p countingProc) Process(ctx context.Context, ev events.Event) error {
	p.mu.Lock()
	p.seen[ev.EventID] = append(p.seen[ev.EventID], p.name)
	p.mu.Unlock()
	return p.run(ctx, ev)
}

// consumerFixture is an event stream with its shared durable consumer,
// and the workers a test starts on it, each on its own connection.
type consumerFixture struct {
	srv  *server.Server
	js   jetstream.JetStream
	cfg  events.ConsumerConfig
	mu   sync.Mutex
	seen map[string][]string
}

func newConsumerFixture(t *testing.T, cfg events.ConsumerConfig) *consumerFixture {
	t.Helper()
	f := &consumerFixture{srv: testutil.StartJetStream(t), cfg: cfg, seen: map[string][]string{}}
	_, f.js = testutil.Connect(t, f.srv)
	ctx := context.Background()
	_, err := events.EnsureEventStream(ctx, f.js, events.StreamConfig{})
	require.NoError(t, err)
	_, err = events.EnsureConsumer(ctx, f.js, cfg)
	require.NoError(t, err)
	return f
}

// publish stores one order event and returns its event id.
func (f *consumerFixture) publish(t *testing.T, i int) string {
	t.Helper()
	body := loadgen.Body("inprogress", i)
	env, err := cobo.ParseEnvelope(body)
	require.NoError(t, err)
	d := cobo.Delivery{Envelope: env, Body: body, Timestamp: "1700000000000", Signature: "00", ReceivedAt: time.Now()}
	_, err = events.NewPublisher(f.js).Store(context.Background(), d)
	require.NoError(t, err)
	return d.EventID
}

// startWorker runs a Consumer named name on a connection of its own, and
// returns a function closing that connection, as a crash would. The
// consumer is stopped when the test ends.
func (f *consumerFixture) startWorker(t *testing.T, name string, run func(ctx context.Context, ev events.Event) error) (kill func()) {
	t.Helper()
	nc, js := testutil.Connect(t, f.srv)
	cons, err := js.Consumer(context.Background(), events.StreamName, events.ConsumerName)
	require.NoError(t, err)
	cfg := f.cfg
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	c, err := events.NewConsumer(js, cons, countingProc{name: name, mu: &f.mu, seen: f.seen, run: run}, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return nc.Close
}

func (f *consumerFixture) deliveries(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen[id]...)
}

func (f *consumerFixture) info(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	return testutil.WorkerConsumerInfo(t, f.js)
}

// handlerTaking is a handler that takes d, or until its context ends.
func handlerTaking(d time.Duration) func(ctx context.Context, ev events.Event) error {
	return func(ctx context.Context, ev events.Event) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestSlowHandlerIsNotRedelivered runs a handler three times as long as the
// ack wait, with a second worker waiting for work: the event is marked in
// progress while it runs, so it is handled once, by one worker, and acked.
func TestSlowHandlerIsNotRedelivered(t *testing.T) {
	f := newConsumerFixture(t, events.ConsumerConfig{AckWait: time.Second, HandleTimeout: 10 * time.Second, Concurrency: 2})
	slow := handlerTaking(3 * time.Second)
	f.startWorker(t, "a", slow)
	f.startWorker(t, "b", slow)
	id := f.publish(t, 0)

	testutil.WaitFor(t, 30*time.Second, "the event to be acked", func() bool {
		info := f.info(t)
		return info.AckFloor.Stream == 1 && info.NumAckPending == 0
	})
	require.Len(t, f.deliveries(id), 1, "delivered once although its handler outlasted the ack wait three times")
	require.Zero(t, f.info(t).NumRedelivered)
}

// TestEventsBufferedAheadAreHandledWithinTheAckWait: a worker pulls
// events ahead of its handlers, and a buffered event is not marked in
// progress. With the default buffer (two per handler) every buffered
// event reaches a handler long before the ack wait, even when handlers
// are slow. Before, the default buffered 256 events: behind slow handlers
// the later ones waited unmarked past the ack wait and were delivered
// again, each time a delivery towards MaxDeliver (a dead letter for an
// event nobody failed).
func TestEventsBufferedAheadAreHandledWithinTheAckWait(t *testing.T) {
	f := newConsumerFixture(t, events.ConsumerConfig{AckWait: 2 * time.Second, HandleTimeout: 10 * time.Second, Concurrency: 4})
	slow := handlerTaking(200 * time.Millisecond)
	// 80 events behind 4 handlers of 200 ms: the last waits 4 s when all
	// are buffered at once, twice the ack wait.
	const n = 80
	var ids []string
	for i := range n {
		ids = append(ids, f.publish(t, i))
	}
	f.startWorker(t, "a", slow)
	testutil.WaitFor(t, 60*time.Second, "every event to be acked", func() bool {
		info := f.info(t)
		return info.AckFloor.Stream == n && info.NumAckPending == 0
	})
	// Every delivery is counted, the stale copy of a redelivered event
	// too (the consumer's NumRedelivered forgets acked events).
	for _, id := range ids {
		require.Len(t, f.deliveries(id), 1, "event %s", id)
	}
}

// TestDeadWorkersEventComesBack kills a worker in the middle of an event:
// its marks stop with it, and the event goes to another worker once the
// ack wait has passed.
func TestDeadWorkersEventComesBack(t *testing.T) {
	f := newConsumerFixture(t, events.ConsumerConfig{AckWait: time.Second, HandleTimeout: time.Minute})
	hang := make(chan struct{})
	kill := f.startWorker(t, "victim", func(ctx context.Context, ev events.Event) error {
		select {
		case <-hang:
		case <-ctx.Done():
		}
		return ctx.Err()
	})
	// After the victim's stop, which waits for its handler (cleanups run
	// last first).
	t.Cleanup(func() { close(hang) })
	id := f.publish(t, 0)
	testutil.WaitFor(t, 10*time.Second, "the victim to hold the event", func() bool { return len(f.deliveries(id)) == 1 })
	kill()

	f.startWorker(t, "survivor", func(context.Context, events.Event) error { return nil })
	testutil.WaitFor(t, 30*time.Second, "the survivor to get the event", func() bool {
		d := f.deliveries(id)
		return len(d) == 2 && d[1] == "survivor"
	})
}

// TestHandlerPastItsTimeoutLosesTheEvent runs a handler that ignores its
// deadline: the marks end at HandleTimeout, so the event is redelivered
// rather than held for as long as the handler hangs.
func TestHandlerPastItsTimeoutLosesTheEvent(t *testing.T) {
	f := newConsumerFixture(t, events.ConsumerConfig{AckWait: time.Second, HandleTimeout: 1500 * time.Millisecond})
	hang := make(chan struct{})
	f.startWorker(t, "stuck", func(context.Context, events.Event) error {
		<-hang
		return nil
	})
	t.Cleanup(func() { close(hang) })
	id := f.publish(t, 0)
	testutil.WaitFor(t, 10*time.Second, "the stuck worker to hold the event", func() bool { return len(f.deliveries(id)) == 1 })

	f.startWorker(t, "other", func(context.Context, events.Event) error { return nil })
	testutil.WaitFor(t, 30*time.Second, "the event to be delivered again", func() bool { return len(f.deliveries(id)) >= 2 })
}

// TestEnsureConsumerUpdatesTheAckWait starts a worker of this version on a
// durable consumer an earlier one created with a 30 s ack wait: the
// consumer takes the new ack wait.
func TestEnsureConsumerUpdatesTheAckWait(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	_, err := events.EnsureEventStream(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	_, err = events.EnsureConsumer(ctx, js, events.ConsumerConfig{AckWait: 30 * time.Second})
	require.NoError(t, err)

	cons, err := events.EnsureConsumer(ctx, js, events.ConsumerConfig{})
	require.NoError(t, err)
	require.Equal(t, events.DefaultAckWait, cons.CachedInfo().Config.AckWait)
	cons, err = js.Consumer(ctx, events.StreamName, events.ConsumerName)
	require.NoError(t, err)
	require.Equal(t, events.DefaultAckWait, cons.CachedInfo().Config.AckWait)
}

func TestConsumerConfigAllowsHandleTimeoutBeyondAckWait(t *testing.T) {
	cfg := events.ConsumerConfig{AckWait: time.Second, HandleTimeout: time.Minute}.WithDefaults()
	require.NoError(t, cfg.Validate())
	require.Equal(t, events.DefaultHandleTimeout, events.ConsumerConfig{}.WithDefaults().HandleTimeout)
	cfg.HandleTimeout = -time.Second
	require.ErrorContains(t, cfg.Validate(), "HandleTimeout must be positive")
}
