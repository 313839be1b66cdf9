package allocation_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/testutil"
)

// ownerTimings are short heartbeat settings, so that an owner is found
// dead within a second.
var ownerTimings = allocation.BatcherConfig{
	BatchWait: 20 * time.Millisecond, RecoverEvery: 100 * time.Millisecond,
	HeartbeatEvery: 100 * time.Millisecond, OwnerTimeout: 500 * time.Millisecond,
	RetryMax: 100 * time.Millisecond, SendTimeout: 10 * time.Second,
}

// ownerRig is a harness whose batchers run (Run), each on a connection of
// its own.
type ownerRig struct {
	*harness
	srv *server.Server
	js  jetstream.JetStream
}

func newOwnerRig(t *testing.T) *ownerRig {
	t.Helper()
	h, srv, js := newStores(t)
	return &ownerRig{harness: h, srv: srv, js: js}
}

// runBatcher runs a batcher with cfg on a connection of its own until the
// test ends, and returns a function closing that connection: the batcher
// is cut off from NATS as by a crash (no heartbeat, no clean-up), though
// its goroutine lives on.
func (r *ownerRig) runBatcher(t *testing.T, api allocation.CoboAPI, cfg allocation.BatcherConfig) (crash func()) {
	t.Helper()
	nc, js := testutil.Connect(t, r.srv)
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, events.OrdersBucket)
	require.NoError(t, err)
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	cfg.Metrics = allocation.NewMetrics(prometheus.NewRegistry())
	b, err := allocation.NewBatcher(ctx, js, api, events.NewOrderStore(kv), cfg)
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { _ = b.Run(rctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	return nc.Close
}

// beat keeps a heartbeat for owner fresh, as a live batcher does, until
// the returned function is called.
func (r *ownerRig) beat(t *testing.T, owner string) (stop func()) {
	t.Helper()
	kv, err := r.js.KeyValue(context.Background(), allocation.OwnersBucket)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			_, _ = kv.Put(ctx, owner, []byte(`{"owner":"`+owner+`"}`))
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	_, err = kv.Put(ctx, owner, []byte(`{"owner":"`+owner+`"}`))
	require.NoError(t, err)
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

func (r *ownerRig) completed(t *testing.T, orderID string) bool {
	t.Helper()
	for _, st := range r.statuses(t, orderID) {
		if st != domain.AllocCompleted {
			return false
		}
	}
	return true
}

// sentIDs are the request_ids of the sends api saw.
func sentIDs(api *scriptedCobo) map[string]int {
	creates, _ := api.calls()
	out := map[string]int{}
	for _, c := range creates {
		out[c.RequestID]++
	}
	return out
}

// TestBatchOfLiveOwnerIsLeftAloneUntilItDies: a batch last written an hour
// ago by an owner whose heartbeat is fresh is not taken over, although the
// fallback age (RecoverAfter) is a millisecond; the batch of an owner with
// no heartbeat is. Once the live owner stops beating, its batch is resumed.
func TestBatchOfLiveOwnerIsLeftAloneUntilItDies(t *testing.T) {
	r := newOwnerRig(t)
	api := &scriptedCobo{onCreate: func(_ int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
		return createdBatch(req)
	}}
	hourAgo := time.Now().Add(-time.Hour).UTC()
	owned := func(owner string) func(*allocation.Batch) {
		return func(b *allocation.Batch) {
			b.Owner, b.UpdatedAt, b.CreatedAt, b.ItemsSince = owner, hourAgo, hourAgo, hourAgo
		}
	}
	stopLive := r.beat(t, "live-owner")
	live := r.persist(t, r.plant(t, "O-live", 2), owned("live-owner"))
	dead := r.persist(t, r.plant(t, "O-dead", 1), owned("dead-owner"))

	cfg := ownerTimings
	cfg.RecoverAfter = time.Millisecond
	r.runBatcher(t, api, cfg)
	testutil.WaitFor(t, 20*time.Second, "the dead owner's batch to be resumed", func() bool { return r.completed(t, "O-dead") })
	// A batch persisted now is resumed by a later pass than the one that
	// resumed the first: by then, that pass has judged the live owner's
	// batch too.
	r.persist(t, r.plant(t, "O-dead-2", 1), owned("dead-owner"))
	testutil.WaitFor(t, 20*time.Second, "the second dead batch to be resumed", func() bool { return r.completed(t, "O-dead-2") })
	require.Zero(t, sentIDs(api)[live], "the live owner's batch is left to it")
	require.Equal(t, 1, sentIDs(api)[dead])
	require.Equal(t, []string{domain.AllocPlanned, domain.AllocPlanned}, r.statuses(t, "O-live"))
	require.Equal(t, "live-owner", r.batch(t, live).Owner)

	stopLive()
	testutil.WaitFor(t, 20*time.Second, "the batch of the owner that died to be resumed", func() bool { return r.completed(t, "O-live") })
	require.Equal(t, 1, sentIDs(api)[live])
	// The batch is retired after its items are recorded on the order, so
	// a moment after the order shows them (the test read it too early once
	// under a full -race suite).
	testutil.WaitFor(t, 20*time.Second, "the batch to be retired once recorded", func() bool { return r.batch(t, live) == nil })
}

// TestCrashedBatchersBatchIsResumedByAnother cuts a batcher off from NATS
// in the middle of a send (its batch persisted in flight): another batcher
// resumes the batch once the heartbeat is stale, although the fallback age
// (RecoverAfter) is an hour, with the same request_id, and the items are
// recorded once.
func TestCrashedBatchersBatchIsResumedByAnother(t *testing.T) {
	r := newOwnerRig(t)
	release := make(chan struct{})
	api := &scriptedCobo{onCreate: func(n int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
		if n == 1 {
			// The first send never gets its answer to the batcher.
			<-release
			return cobo.BatchAllocation{}, errLost
		}
		return createdBatch(req)
	}}
	cfg := ownerTimings
	cfg.RecoverAfter = time.Hour
	crash := r.runBatcher(t, api, cfg)
	t.Cleanup(func() { close(release) }) // before the victim's stop, which waits for its send

	r.plant(t, "O-crash", 3)
	o, _, err := r.orders.Get(context.Background(), "O-crash")
	require.NoError(t, err)
	_, err = allocation.NewOutbox(r.js).Publish(context.Background(), o)
	require.NoError(t, err)
	testutil.WaitFor(t, 20*time.Second, "the first batcher to be sending", func() bool { return len(sentIDs(api)) == 1 })
	crash()

	r.runBatcher(t, api, cfg)
	testutil.WaitFor(t, 20*time.Second, "another batcher to resume the batch", func() bool { return r.completed(t, "O-crash") })
	creates, _ := api.calls()
	require.Len(t, creates, 2)
	require.Equal(t, creates[0].RequestID, creates[1].RequestID, "resent with its request_id")
	for _, it := range r.items(t, "O-crash") {
		require.Equal(t, creates[0].RequestID, it.RequestID)
	}
}

// TestBitGoSendOfDeadSenderIsLookedUp: an item whose send was in flight
// at a sender that is gone (no heartbeat) is looked up at once rather than
// after the send's timeout; one whose sender is alive is left alone until
// that sender dies.
func TestBitGoSendOfDeadSenderIsLookedUp(t *testing.T) {
	for _, alive := range []bool{false, true} {
		name := map[bool]string{false: "dead sender", true: "live sender"}[alive]
		t.Run(name, func(t *testing.T) {
			logs := &testutil.SyncBuffer{}
			r := newBitGoRig(t, bitgosim.Config{NonceOnce: true}, nil)
			r.log = zerolog.New(logs).Level(zerolog.WarnLevel)
			rig := &ownerRig{srv: nil, js: r.js}
			var stop func()
			if alive {
				stop = rig.beat(t, "other-sender")
			}
			it := r.plant(t, "O-gone")
			req := r.prepare(t, it)
			now := time.Now().UTC()
			r.putRecord(t, allocation.BitGoRecord{Item: it, Request: req, Sends: 1, Unclear: true,
				SendingUntil: now.Add(10 * time.Minute), SendingOwner: "other-sender",
				History: []allocation.BitGoSigned{{Nonce: req.Nonce(), SignedAt: now, Why: "first", Sends: 1}}, CreatedAt: now, UpdatedAt: now}, it.ID)

			r.run(t)
			if alive {
				testutil.WaitFor(t, 20*time.Second, "the item to be left to its live sender twice", func() bool {
					return strings.Count(logs.String(), "in flight") >= 2
				})
				posts, lookups := r.counts()
				require.Zero(t, posts)
				require.Zero(t, lookups)
				stop()
			}
			got := r.final(t, "O-gone")
			require.Equal(t, domain.AllocCompleted, got.Status, got.Reason)
			_, lookups := r.counts()
			require.Positive(t, lookups, "looked up before anything else")
			r.requireOneAllocation(t, it)
		})
	}
}

// TestHeartbeatConfig: the heartbeat settings have defaults and are
// checked by name.
func TestHeartbeatConfig(t *testing.T) {
	b := allocation.BatcherConfig{}.WithDefaults()
	require.Equal(t, allocation.DefaultHeartbeatEvery, b.HeartbeatEvery)
	require.Equal(t, allocation.DefaultOwnerTimeout, b.OwnerTimeout)
	require.NoError(t, b.Validate())
	b.OwnerTimeout = 2 * b.HeartbeatEvery
	require.ErrorContains(t, b.Validate(), "OwnerTimeout must be at least three HeartbeatEvery")
	s := allocation.BitGoSenderConfig{HeartbeatEvery: -time.Second}.WithDefaults()
	require.ErrorContains(t, s.Validate(), "HeartbeatEvery must be positive")
}
