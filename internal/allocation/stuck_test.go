package allocation_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http/httptest"
	"strings"
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

// TestStuckItemsAreMarkedAndPolledUntilDone: Cobo keeps one item of a
// batch Transferring. Past StuckAfter it is marked stuck on its order,
// logged at error level once and counted; polling backs off but never
// stops, so when Cobo finishes the item it is completed and unmarked.
func TestStuckItemsAreMarkedAndPolledUntilDone(t *testing.T) {
	srv := testutil.StartJetStream(t)
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	require.NoError(t, allocation.EnsureResources(ctx, js, events.StreamConfig{}, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	store := events.NewOrderStore(kv)

	seed := make([]byte, 32)
	_, err = rand.Read(seed)
	require.NoError(t, err)
	signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: zerolog.Nop()})
	sim.SetItemStatus("M9000", cobo.ItemTransferring)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: hs.URL + "/v2", Signer: signer})
	require.NoError(t, err)

	o := &domain.Order{OrderID: "O-stuck"}
	for _, dest := range []string{"developer", "M9000"} {
		o.Allocations = append(o.Allocations, domain.AllocationItem{
			ID: "O-stuck:split:M1001:" + dest, Kind: domain.KindSplit, OrderID: "O-stuck", Backend: domain.BackendCobo, TokenID: "ETH_USDT",
			Amount: decimal.RequireFromString("1.5"), Source: "M1001", Destination: dest, Description: dest + " O-stuck", Status: domain.AllocPlanned,
		})
	}
	_, err = store.Put(ctx, o, 0)
	require.NoError(t, err)
	_, err = allocation.NewOutbox(js).Publish(ctx, o)
	require.NoError(t, err)

	logs := &testutil.SyncBuffer{}
	reg := prometheus.NewRegistry()
	bt, err := allocation.NewBatcher(ctx, js, client, store, allocation.BatcherConfig{
		BatchWait: 20 * time.Millisecond, RecoverEvery: 20 * time.Millisecond, RecoverAfter: 20 * time.Millisecond,
		RetryMax: 200 * time.Millisecond, StuckAfter: 300 * time.Millisecond,
		Logger: zerolog.New(logs).Level(zerolog.WarnLevel), Metrics: allocation.NewMetrics(reg),
	})
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { _ = bt.Run(rctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })

	item := func(dest string) domain.AllocationItem {
		o, _, err := store.Get(ctx, "O-stuck")
		require.NoError(t, err)
		return *o.Allocation("O-stuck:split:M1001:" + dest)
	}
	require.Eventually(t, func() bool { return item("M9000").StuckSince != nil }, 10*time.Second, 20*time.Millisecond)
	stuck := item("M9000")
	require.Equal(t, domain.AllocPending, stuck.Status)
	require.Equal(t, cobo.ItemTransferring, stuck.ProviderStatus)
	require.Equal(t, domain.AllocCompleted, item("developer").Status)
	require.Nil(t, item("developer").StuckSince)
	require.Eventually(t, func() bool { return gathered(t, reg, "paystream_allocation_items_stuck", nil) == 1 }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, strings.Count(logs.String(), "allocation item stuck"), logs.String())

	// Polling goes on, at most RetryMax apart.
	polls := sim.State().Requests
	require.Eventually(t, func() bool { return sim.State().Requests >= polls+3 }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, strings.Count(logs.String(), "allocation item stuck"), "logged once")

	require.Equal(t, 1, sim.SettleItems("M9000", cobo.ItemCompleted))
	require.Eventually(t, func() bool { return item("M9000").Status == domain.AllocCompleted }, 5*time.Second, 20*time.Millisecond)
	require.Nil(t, item("M9000").StuckSince, "a final item is no longer stuck")
	require.Eventually(t, func() bool { return gathered(t, reg, "paystream_allocation_items_stuck", nil) == 0 }, 5*time.Second, 20*time.Millisecond)
	require.Len(t, sim.Items(), 2, "each item sent once")
}
