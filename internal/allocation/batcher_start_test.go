package allocation_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// TestBatcherRetriesAFailedConsumerLookup starts a batcher while its
// shared consumer cannot be found: it waits instead of ending for good,
// and batches once the consumer is back.
func TestBatcherRetriesAFailedConsumerLookup(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	ctx := context.Background()
	require.NoError(t, allocation.EnsureResources(ctx, js, events.StreamConfig{}, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	h := &harness{orders: events.NewOrderStore(kv), reg: prometheus.NewRegistry()}
	api := &scriptedCobo{onCreate: func(_ int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
		return createdBatch(req)
	}}
	b, err := allocation.NewBatcher(ctx, js, api, h.orders, allocation.BatcherConfig{
		BatchWait: 20 * time.Millisecond, Logger: zerolog.New(zerolog.NewTestWriter(t)), Metrics: allocation.NewMetrics(h.reg),
	})
	require.NoError(t, err)
	require.NoError(t, js.DeleteConsumer(ctx, allocation.IntentStream, allocation.BatcherConsumer))

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	select {
	case err := <-done:
		t.Fatalf("the batcher gave up on a failed consumer lookup: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}

	require.NoError(t, allocation.EnsureResources(ctx, js, events.StreamConfig{}, 5*time.Second))
	items := h.plant(t, "O-lookup", 2)
	o, _, err := h.orders.Get(ctx, "O-lookup")
	require.NoError(t, err)
	_, err = allocation.NewOutbox(js).Publish(ctx, o)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		creates, _ := api.calls()
		return len(creates) == 1 && len(creates[0].AllocationParams) == len(items)
	}, 10*time.Second, 20*time.Millisecond, "one batch of both items once the consumer is found")
}
