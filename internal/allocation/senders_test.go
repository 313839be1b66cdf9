package allocation_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// flakyOrders is the real order store whose Get of one order fails the
// first fails times, as a JetStream timeout would.
type flakyOrders struct {
	allocation.OrderRepo
	orderID string
	mu      sync.Mutex
	fails   int
	gets    int
}

func (f *flakyOrders) Get(ctx context.Context, orderID string) (*domain.Order, uint64, error) {
	f.mu.Lock()
	fail := orderID == f.orderID && f.gets < f.fails
	if orderID == f.orderID {
		f.gets++
	}
	f.mu.Unlock()
	if fail {
		return nil, 0, errors.New("nats: timeout")
	}
	return f.OrderRepo.Get(ctx, orderID)
}

func (f *flakyOrders) getsOf() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets
}

// TestBatcherHandsBackIntentsOfUnreadableOrdersAndAcksStaleOnes: an order
// that cannot be read is not a rejection, its intents come back and are
// sent once it can; an intent for an item already recorded is acked
// without sending and without counting it rejected.
func TestBatcherHandsBackIntentsOfUnreadableOrdersAndAcksStaleOnes(t *testing.T) {
	srv := testutil.StartJetStream(t)
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	cfg := events.StreamConfig{}
	require.NoError(t, allocation.EnsureResources(ctx, js, cfg, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	store := events.NewOrderStore(kv)
	orders := &flakyOrders{OrderRepo: store, orderID: "O-flaky", fails: 2}

	seed := make([]byte, 32)
	_, err = rand.Read(seed)
	require.NoError(t, err)
	signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: log})
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: hs.URL + "/v2", Signer: signer})
	require.NoError(t, err)

	// Both intents are published as the outbox does; then O-done's item is
	// recorded completed, so its intent arrives as a stale redelivery.
	outbox := allocation.NewOutbox(js)
	plant := func(id string) *domain.Order {
		o := &domain.Order{OrderID: id, Allocations: []domain.AllocationItem{{
			ID: id + ":split:0:developer", Kind: domain.KindSplit, OrderID: id, Backend: domain.BackendCobo, TokenID: "ETH_USDT",
			Amount: decimal.RequireFromString("1.5"), Source: "M1001", Destination: "developer",
			Description: "commission " + id, Status: domain.AllocPlanned,
		}}}
		_, err := store.Put(ctx, o, 0)
		require.NoError(t, err)
		_, err = outbox.Publish(ctx, o)
		require.NoError(t, err)
		return o
	}
	plant("O-flaky")
	done := plant("O-done")
	_, rev, err := store.Get(ctx, "O-done")
	require.NoError(t, err)
	done.Allocations[0].Status, done.Allocations[0].RequestID = domain.AllocCompleted, "earlier-request"
	_, err = store.Put(ctx, done, rev)
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	bt, err := allocation.NewBatcher(ctx, js, client, orders, allocation.BatcherConfig{
		BatchWait: 20 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond,
		Logger: log, Metrics: allocation.NewMetrics(reg),
	})
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { _ = bt.Run(rctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })

	require.Eventually(t, func() bool {
		o, _, err := store.Get(ctx, "O-flaky")
		require.NoError(t, err)
		return o.Allocations[0].Status == domain.AllocCompleted
	}, 20*time.Second, 20*time.Millisecond)
	require.Greater(t, orders.getsOf(), 2, "the intent came back after each failed read")
	items := sim.Items()
	require.Len(t, items, 1, "only O-flaky's item is sent; O-done's was recorded before")
	require.Equal(t, "commission O-flaky", items[0].Description)
	require.Zero(t, rejectedTotal(t, reg))
	o, _, err := store.Get(ctx, "O-done")
	require.NoError(t, err)
	require.Equal(t, "earlier-request", o.Allocations[0].RequestID, "the stale intent changed nothing")
}

// rejectedTotal sums paystream_allocation_intents_rejected_total.
func rejectedTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "paystream_allocation_intents_rejected_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
