package events_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// shortRetention keeps settled state 2 s, the shortest window the tests
// can wait out; JetStream TTLs count whole seconds.
var shortRetention = events.Retention{Keep: 2 * time.Second, Margin: time.Second}

// openOrders creates the orders bucket as a worker does and opens the
// store the workers write with.
func openOrders(t *testing.T, js jetstream.JetStream, r events.Retention, log zerolog.Logger) (*events.OrderStore, jetstream.KeyValue) {
	t.Helper()
	ctx := context.Background()
	cfg := events.StreamConfig{Retention: r, Logger: log}
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	store, err := events.OpenOrderStore(ctx, js, kv, cfg)
	require.NoError(t, err)
	return store, kv
}

// putOrder writes o over rev and returns the new revision.
func putOrder(t *testing.T, store *events.OrderStore, o *domain.Order, rev uint64) uint64 {
	t.Helper()
	rev, err := store.Put(context.Background(), o, rev)
	require.NoError(t, err)
	return rev
}

func gone(t *testing.T, store *events.OrderStore, orderID string) bool {
	t.Helper()
	_, _, err := store.Get(context.Background(), orderID)
	if errors.Is(err, domain.ErrNotFound) {
		return true
	}
	require.NoError(t, err)
	return false
}

// TestSettledOrdersExpireWholeAndOthersNever: an order whose status is
// final and whose allocation items are all final expires the retention
// after its last write, with every earlier revision (none of which
// carried a TTL) gone too, so that no older state reappears; an order in
// progress, and a final order with an item still planned, never expire.
func TestSettledOrdersExpireWholeAndOthersNever(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	store, kv := openOrders(t, js, shortRetention, zerolog.New(zerolog.NewTestWriter(t)))

	settled := &domain.Order{OrderID: "O-settled", Status: domain.StatusPending}
	rev := putOrder(t, store, settled, 0)
	settled.Status = domain.StatusProcessing
	rev = putOrder(t, store, settled, rev)
	settled.Status = domain.StatusCompleted
	settled.Allocations = []domain.AllocationItem{{ID: "O-settled:split:a", Status: domain.AllocCompleted}}
	putOrder(t, store, settled, rev)

	inProgress := &domain.Order{OrderID: "O-pending", Status: domain.StatusProcessing}
	putOrder(t, store, inProgress, 0)

	open := &domain.Order{OrderID: "O-open", Status: domain.StatusCompleted, Allocations: []domain.AllocationItem{
		{ID: "O-open:split:a", Status: domain.AllocCompleted}, {ID: "O-open:split:b", Status: domain.AllocPending},
	}}
	openRev := putOrder(t, store, open, 0)

	written := time.Now()
	require.False(t, gone(t, store, "O-settled"), "kept while the retention runs")
	require.Eventually(t, func() bool { return gone(t, store, "O-settled") }, 10*time.Second, 50*time.Millisecond)
	require.GreaterOrEqual(t, time.Since(written), shortRetention.Keep-100*time.Millisecond, "kept at least the retention")
	h, err := kv.History(context.Background(), events.OrderKey("O-settled"))
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		require.NoError(t, err)
		for _, e := range h {
			require.NotEqual(t, jetstream.KeyValuePut, e.Operation(), "no earlier revision is left to reappear")
		}
	}

	// Well past the retention, what is not settled is still there.
	time.Sleep(time.Second)
	require.False(t, gone(t, store, "O-pending"))
	require.False(t, gone(t, store, "O-open"))

	// Its last item becomes final: from that write on it expires.
	open.Allocations[1].Status = domain.AllocCompleted
	putOrder(t, store, open, openRev)
	require.Eventually(t, func() bool { return gone(t, store, "O-open") }, 10*time.Second, 50*time.Millisecond)

	// A new write after expiry creates the key again.
	again := &domain.Order{OrderID: "O-settled", Status: domain.StatusProcessing}
	putOrder(t, store, again, 0)
	got, _, err := store.Get(context.Background(), "O-settled")
	require.NoError(t, err)
	require.Equal(t, domain.StatusProcessing, got.Status)
}

// TestLatePaymentsSettleAnOrderWithoutStatus: a late payment shows Cobo
// has the order final, so an order known only by its late payment (the
// hold policy after its state expired) is settled too.
func TestLatePaymentsSettleAnOrderWithoutStatus(t *testing.T) {
	t.Parallel()
	o := &domain.Order{OrderID: "O"}
	require.False(t, o.Settled())
	o.LatePayments = []domain.LatePayment{{TransactionID: "tx"}}
	require.True(t, o.Settled())
	o.Allocations = []domain.AllocationItem{{ID: "O:late:tx", Status: domain.AllocPlanned}}
	require.False(t, o.Settled())
}

// TestAbsentOrdersCarryTheHorizonOnceStateCanHaveExpired: while the
// bucket is younger than the retention nothing can have expired, and an
// absent order is just absent; after that, its new state gets the
// horizon, the retention minus the margin ago.
func TestAbsentOrdersCarryTheHorizonOnceStateCanHaveExpired(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	store, _ := openOrders(t, js, events.Retention{Keep: 3 * time.Second, Margin: time.Second}, zerolog.Nop())
	_, _, err := store.Get(context.Background(), "O-new")
	require.ErrorIs(t, err, domain.ErrNotFound)
	require.True(t, domain.HorizonOf(err).IsZero(), "a young bucket has lost nothing")

	time.Sleep(2100 * time.Millisecond)
	_, _, err = store.Get(context.Background(), "O-new")
	require.ErrorIs(t, err, domain.ErrNotFound)
	hz := domain.HorizonOf(err)
	require.False(t, hz.IsZero())
	require.WithinDuration(t, time.Now().Add(-2*time.Second), hz, 500*time.Millisecond)
	require.Contains(t, err.Error(), "may have expired")

	// A store that keeps everything never gives one.
	kv, err := js.KeyValue(context.Background(), events.OrdersBucket)
	require.NoError(t, err)
	_, _, err = events.NewOrderStore(kv).Get(context.Background(), "O-new")
	require.ErrorIs(t, err, domain.ErrNotFound)
	require.True(t, domain.HorizonOf(err).IsZero())
}

// TestBucketWithoutTTLsIsUpgradedInPlace: a bucket created before paystream
// set per-key TTLs keeps settled orders (and says so, as drift and at
// error level) until an operator enables them on the bucket, which keeps
// its data; a store opened after that expires settled orders.
func TestBucketWithoutTTLsIsUpgradedInPlace(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: events.OrdersBucket, History: 5, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	var logs testutil.SyncBuffer
	store, kv := openOrders(t, js, shortRetention, zerolog.New(&logs))
	require.Contains(t, logs.String(), `LimitMarkerTTL: have 0s, want 2s`)
	require.Contains(t, logs.String(), `bucket has no per-key TTLs`)
	require.Contains(t, logs.String(), `nats kv edit paystream_orders --marker-ttl 2s`)

	before := &domain.Order{OrderID: "O-before", Status: domain.StatusCompleted}
	putOrder(t, store, before, 0)
	time.Sleep(shortRetention.Keep + time.Second)
	require.False(t, gone(t, store, "O-before"), "nothing expires without per-key TTLs")

	// The operator's upgrade (nats kv edit paystream_orders --marker-ttl):
	// the same update the CLI makes, keeping everything else. A marker TTL
	// longer than the retention would raise every key's TTL to it.
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	cfg := st.(*jetstream.KeyValueBucketStatus).Config()
	cfg.LimitMarkerTTL = shortRetention.MarkerTTL()
	_, err = js.UpdateKeyValue(ctx, cfg)
	require.NoError(t, err)
	require.False(t, gone(t, store, "O-before"), "the upgrade keeps the data")

	upgraded, err := events.OpenOrderStore(ctx, js, kv, events.StreamConfig{Retention: shortRetention})
	require.NoError(t, err)
	after := &domain.Order{OrderID: "O-after", Status: domain.StatusCompleted}
	putOrder(t, upgraded, after, 0)
	o, rev, err := upgraded.Get(ctx, "O-before")
	require.NoError(t, err)
	putOrder(t, upgraded, o, rev)
	require.Eventually(t, func() bool { return gone(t, upgraded, "O-after") && gone(t, upgraded, "O-before") }, 10*time.Second, 50*time.Millisecond,
		"settled orders written after the upgrade expire")
}

func TestCheckRetentionAgainstTheEventStream(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	_, err := events.EnsureEventStream(ctx, js, events.StreamConfig{MaxAge: 30 * 24 * time.Hour})
	require.NoError(t, err)
	for keep, ok := range map[time.Duration]bool{29 * 24 * time.Hour: false, 30 * 24 * time.Hour: false, 31 * 24 * time.Hour: true, events.DefaultRetention: true} {
		err := events.CheckRetention(ctx, js, events.Retention{Keep: keep})
		if ok {
			require.NoError(t, err, keep)
			continue
		}
		require.ErrorIs(t, err, events.ErrRetentionTooShort, keep)
		require.ErrorContains(t, err, "max age 720h0m0s")
	}

	// A stream keeping events for ever outlives any retention.
	s, err := js.Stream(ctx, events.StreamName)
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	cfg.MaxAge = 0
	_, err = js.UpdateStream(ctx, cfg)
	require.NoError(t, err)
	require.ErrorIs(t, events.CheckRetention(ctx, js, events.Retention{Keep: 10 * 365 * 24 * time.Hour}), events.ErrRetentionTooShort)
}

func TestRetentionDefaultsAndChecks(t *testing.T) {
	t.Parallel()
	r := events.Retention{}.WithDefaults()
	require.Equal(t, events.DefaultRetention, r.Keep)
	require.Equal(t, events.DefaultRetentionMargin, r.Margin)
	require.NoError(t, r.Validate())
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	require.Equal(t, now.Add(-89*24*time.Hour), r.Horizon(now), "the retention minus a day")
	require.Equal(t, time.Hour, r.MarkerTTL())
	require.Equal(t, 2*time.Second, shortRetention.MarkerTTL(), "never longer than the retention")

	require.Equal(t, 2*time.Second, events.Retention{Keep: 4 * time.Second}.WithDefaults().Margin, "a short retention gets half of it as margin")
	require.ErrorContains(t, events.Retention{Keep: 500 * time.Millisecond, Margin: time.Millisecond}.Validate(), "Keep")
	require.ErrorContains(t, events.Retention{Keep: time.Hour, Margin: time.Hour}.Validate(), "Margin")
	require.ErrorContains(t, events.StreamConfig{Retention: events.Retention{Keep: time.Hour, Margin: 2 * time.Hour}}.WithDefaults().Validate(), "Retention.Margin")
}
