package handlers_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/testutil"
)

// cachedStores returns n stores on one real bucket, each remembering
// orders as a worker process's does: n worker processes.
func cachedStores(t *testing.T, n int) ([]*events.OrderStore, jetstream.KeyValue) {
	t.Helper()
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	stores := make([]*events.OrderStore, n)
	for i := range stores {
		stores[i], err = events.OpenOrderStore(ctx, js, kv, events.StreamConfig{})
		require.NoError(t, err)
	}
	return stores, kv
}

// deposits returns the transaction ids of the order's recorded deposits.
func deposits(t *testing.T, store *events.OrderStore, orderID string) []string {
	t.Helper()
	o, _, err := store.Get(context.Background(), orderID)
	require.NoError(t, err)
	var ids []string
	for _, d := range o.Deposits {
		ids = append(ids, d.TransactionID)
	}
	return ids
}

// TestStaleCachedRevisionIsReReadNeverLost: a process whose remembered
// copy of an order is stale (another process wrote since) tries its
// compare-and-set at that revision, loses, reads, merges and commits:
// both processes' changes are kept.
func TestStaleCachedRevisionIsReReadNeverLost(t *testing.T) {
	ctx := context.Background()
	stores, _ := cachedStores(t, 2)
	a, b := handlers.New(stores[0]), handlers.New(stores[1])
	const id = "O-stale"

	out, err := a.Handle(ctx, delivery(t, testutil.OrderEvent(id+"-pending", id, "M1001", "Pending", 100, "0")))
	require.NoError(t, err)
	require.Equal(t, handlers.Applied, out.Result)
	_, remembered, err := stores[0].Cached(id)
	require.NoError(t, err)

	// b (the other process) credits a deposit: a's copy is now stale.
	out, err = b.Handle(ctx, delivery(t, testutil.TransactionEvent(id+"-tx1", "completed", id, "tx1", "50")))
	require.NoError(t, err)
	require.Equal(t, handlers.Applied, out.Result)
	_, rev, err := stores[0].Cached(id)
	require.NoError(t, err)
	require.Equal(t, remembered, rev, "a has not seen b's write")

	out, err = a.Handle(ctx, delivery(t, testutil.TransactionEvent(id+"-tx2", "completed", id, "tx2", "52")))
	require.NoError(t, err)
	require.Equal(t, handlers.Applied, out.Result)
	require.Equal(t, domain.StatusProcessing, out.Order.Status)
	require.ElementsMatch(t, []string{"tx1", "tx2"}, deposits(t, stores[1], id), "neither change is lost")
	_, rev, err = stores[0].Cached(id)
	require.NoError(t, err)
	require.Greater(t, rev, remembered, "a remembers what it wrote after the re-read")
}

// TestUnchangedIsDecidedOnStoredStateNotACachedCopy: an event that
// changes nothing in the copy a process remembers may still be news to
// the stored state, or the stored state may be further on; the outcome
// reports the stored order, as without a cache.
func TestUnchangedIsDecidedOnStoredStateNotACachedCopy(t *testing.T) {
	ctx := context.Background()
	stores, _ := cachedStores(t, 2)
	a, b := handlers.New(stores[0]), handlers.New(stores[1])
	const id = "O-unchanged"
	pending := delivery(t, testutil.OrderEvent(id+"-pending", id, "M1001", "Pending", 100, "0"))
	_, err := a.Handle(ctx, pending)
	require.NoError(t, err)
	out, err := b.Handle(ctx, delivery(t, testutil.OrderEvent(id+"-completed", id, "M1001", "Completed", 200, "102")))
	require.NoError(t, err)
	require.True(t, out.FirstCompleted)

	// A redelivery of the Pending event to a: nothing to do against its
	// copy, and nothing against the stored state, which it reports.
	out, err = a.Handle(ctx, pending)
	require.NoError(t, err)
	require.Equal(t, handlers.Unchanged, out.Result)
	require.Equal(t, domain.StatusCompleted, out.Order.Status, "the stored order, not a's stale copy")
}

// TestConcurrentCachedProcessesKeepEveryChange: two processes (stores
// with caches of their own) and several goroutines each credit distinct
// deposits to the same orders at once, and deliver every order's
// lifecycle in different orders: every deposit survives, and each order
// is completed and its late payment recorded by exactly one event.
func TestConcurrentCachedProcessesKeepEveryChange(t *testing.T) {
	ctx := context.Background()
	stores, _ := cachedStores(t, 2)
	const orders, racers, perRacer = 4, 6, 5
	tl := newTally()
	var wg sync.WaitGroup
	for r := range racers {
		h := handlers.New(stores[r%2])
		wg.Go(func() {
			for o := range orders {
				orderID := fmt.Sprintf("O-cached-race-%d", o)
				evs := lifecycle(orderID)
				for i := range perRacer {
					tx := fmt.Sprintf("r%d-tx%d", r, i)
					bodies := [][]byte{testutil.TransactionEvent(orderID+"-"+tx, "completed", orderID, tx, "1"), evs[(i+r)%len(evs)]}
					for _, body := range bodies {
						if !tl.handle(t, h, orderID, body) {
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
	for o := range orders {
		orderID := fmt.Sprintf("O-cached-race-%d", o)
		got := deposits(t, stores[0], orderID)
		for r := range racers {
			for i := range perRacer {
				require.Contains(t, got, fmt.Sprintf("r%d-tx%d", r, i), orderID)
			}
		}
		require.Equal(t, 1, tl.completed[orderID], orderID)
		require.Equal(t, 1, tl.late[orderID], orderID)
		st, _, err := stores[1].Get(ctx, orderID)
		require.NoError(t, err)
		require.Equal(t, domain.StatusCompleted, st.Status)
	}
}

// TestCachedStoreGivesEveryPermutationTheSameState is
// TestEveryPermutationGivesTheSameState on a store that remembers orders,
// with the events split between two processes: the state is the same as
// without a cache, whatever the order and whoever handles each event.
func TestCachedStoreGivesEveryPermutationTheSameState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	plain := newStore(t)
	stores, _ := cachedStores(t, 2)
	ref := handlers.New(plain)
	hs := []*handlers.Handler{handlers.New(stores[0]), handlers.New(stores[1])}
	for i, p := range permutations(len(lifecycle("x"))) {
		if i%9 != 0 {
			continue // a sample keeps the test short
		}
		orderID := fmt.Sprintf("O-cperm-%d", i)
		evs := lifecycle(orderID)
		tl := newTally()
		for n, idx := range p {
			_, err := ref.Handle(ctx, delivery(t, evs[idx]))
			require.NoError(t, err)
			for k := range 2 {
				require.True(t, tl.handle(t, hs[(n+k+i)%2], orderID, evs[idx]))
			}
		}
		require.Equal(t, 1, tl.completed[orderID], "permutation %v", p)
		require.Equal(t, 1, tl.late[orderID], "permutation %v", p)
		want, _, err := plain.Get(ctx, orderID)
		require.NoError(t, err)
		got, _, err := stores[i%2].Get(ctx, orderID)
		require.NoError(t, err)
		require.JSONEq(t, viewJSON(t, want, orderID), viewJSON(t, got, orderID), "permutation %v", p)
	}
}
