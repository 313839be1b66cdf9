package events_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// TestCachedIsWhatThisProcessLastSawAndTheCASChecksIt: two stores on one
// bucket are two worker processes. What one remembers may be stale; a
// write at a stale revision loses, is forgotten, and a read brings the
// stored state back into the cache.
func TestCachedIsWhatThisProcessLastSawAndTheCASChecksIt(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	a, kv := openOrders(t, js, events.Retention{}, zerolog.Nop())
	b, _ := openOrders(t, js, events.Retention{}, zerolog.Nop())

	_, _, err := a.Cached("O-c1")
	require.ErrorIs(t, err, domain.ErrNotFound, "never seen: answered as an order without state")

	rev1, err := a.Create(ctx, &domain.Order{OrderID: "O-c1", Status: domain.StatusPending})
	require.NoError(t, err)
	o, rev, err := a.Cached("O-c1")
	require.NoError(t, err)
	require.Equal(t, rev1, rev)
	require.Equal(t, domain.StatusPending, o.Status)
	o.Status = domain.StatusExpired
	again, _, err := a.Cached("O-c1")
	require.NoError(t, err)
	require.Equal(t, domain.StatusPending, again.Status, "each answer is the caller's own copy")

	// The other process moves the order on; a's copy is now stale.
	o, rev, err = b.Get(ctx, "O-c1")
	require.NoError(t, err)
	require.Equal(t, rev1, rev)
	o.Status = domain.StatusProcessing
	rev2 := putOrder(t, b, o, rev)
	_, rev, err = a.Cached("O-c1")
	require.NoError(t, err)
	require.Equal(t, rev1, rev, "nothing told a")

	stale := &domain.Order{OrderID: "O-c1", Status: domain.StatusCompleted}
	_, err = a.Put(ctx, stale, rev1)
	require.ErrorIs(t, err, domain.ErrConflict, "the compare-and-set is the guard")
	_, _, err = a.Cached("O-c1")
	require.ErrorIs(t, err, domain.ErrNotFound, "a lost race forgets the stale copy")
	_, err = a.Create(ctx, stale)
	require.ErrorIs(t, err, domain.ErrConflict, "an order that exists is not created over")

	o, rev, err = a.Get(ctx, "O-c1")
	require.NoError(t, err)
	require.Equal(t, rev2, rev)
	cached, crev, err := a.Cached("O-c1")
	require.NoError(t, err)
	require.Equal(t, rev2, crev, "a read is remembered")
	require.Equal(t, o, cached)

	// A removed order: Create does not look for its marker and loses;
	// Get answers it absent, and Put at revision 0 replaces the marker.
	_, err = a.Create(ctx, &domain.Order{OrderID: "O-c2", Status: domain.StatusPending})
	require.NoError(t, err)
	require.NoError(t, kv.Delete(ctx, events.OrderKey("O-c2")))
	_, err = a.Create(ctx, &domain.Order{OrderID: "O-c2", Status: domain.StatusPending})
	require.ErrorIs(t, err, domain.ErrConflict)
	_, _, err = a.Get(ctx, "O-c2")
	require.ErrorIs(t, err, domain.ErrNotFound)
	_, _, err = a.Cached("O-c2")
	require.ErrorIs(t, err, domain.ErrNotFound)
	putOrder(t, a, &domain.Order{OrderID: "O-c2", Status: domain.StatusPending}, 0)

	// A reader's store remembers nothing.
	_, _, err = events.NewOrderStore(kv).Cached("O-c1")
	require.ErrorIs(t, err, events.ErrNotCached)
}

// TestCreateOfASettledOrderExpires: an order settled at its first write
// is created with the retention's TTL, as Put creates it.
func TestCreateOfASettledOrderExpires(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	store, _ := openOrders(t, js, shortRetention, zerolog.Nop())
	s, err := js.Stream(ctx, "KV_"+events.OrdersBucket)
	require.NoError(t, err)
	for _, o := range []*domain.Order{
		{OrderID: "O-settled", Status: domain.StatusExpired},
		{OrderID: "O-open", Status: domain.StatusPending},
	} {
		_, err := store.Create(ctx, o)
		require.NoError(t, err)
		m, err := s.GetLastMsgForSubject(ctx, "$KV."+events.OrdersBucket+"."+events.OrderKey(o.OrderID))
		require.NoError(t, err)
		if o.Settled() {
			require.Equal(t, "2s", m.Header.Get(jetstream.MsgTTLHeader), o.OrderID)
		} else {
			require.Empty(t, m.Header.Get(jetstream.MsgTTLHeader), o.OrderID)
		}
	}
	_, err = store.Create(ctx, &domain.Order{OrderID: "O-settled", Status: domain.StatusExpired})
	require.ErrorIs(t, err, domain.ErrConflict)
}

// When the bucket fails a write (it was deleted, say, and may come back
// with its revisions counting from 1 again), the store forgets every order
// it remembers, not only the one it wrote: no remembered revision may be
// taken for one of a new bucket's.
func TestAFailedWriteForgetsEveryRememberedOrder(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	a, _ := openOrders(t, js, events.Retention{}, zerolog.Nop())
	for _, id := range []string{"O-f1", "O-f2"} {
		_, err := a.Create(ctx, &domain.Order{OrderID: id, Status: domain.StatusPending})
		require.NoError(t, err)
	}
	require.NoError(t, js.DeleteKeyValue(ctx, events.OrdersBucket))
	_, err := a.Put(ctx, &domain.Order{OrderID: "O-f1", Status: domain.StatusCompleted}, 1)
	require.Error(t, err)
	require.NotErrorIs(t, err, domain.ErrConflict)
	for _, id := range []string{"O-f1", "O-f2"} {
		_, _, err := a.Cached(id)
		require.ErrorIs(t, err, domain.ErrNotFound, "%s forgotten", id)
	}
}
