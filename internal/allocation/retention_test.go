package allocation_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// keep is the retention of these tests: JetStream TTLs count whole
// seconds, and 2 s is the shortest window worth waiting out.
const keep = 2 * time.Second

// retained starts JetStream with the allocation resources created for a
// retention of keep, and an order store that keeps orders (the orders'
// own expiry is internal/events' test).
func retained(t *testing.T) (jetstream.JetStream, *events.OrderStore) {
	t.Helper()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	ctx := context.Background()
	cfg := events.StreamConfig{Retention: events.Retention{Keep: keep, Margin: time.Second}}
	require.NoError(t, allocation.EnsureResources(ctx, js, cfg, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	return js, events.NewOrderStore(kv)
}

// plantOne stores an order with one planned item and publishes its intent
// as the outbox does.
func plantOne(t *testing.T, js jetstream.JetStream, store *events.OrderStore, it domain.AllocationItem) {
	t.Helper()
	ctx := context.Background()
	o := &domain.Order{OrderID: it.OrderID, Status: domain.StatusCompleted, Allocations: []domain.AllocationItem{it}}
	_, err := store.Put(ctx, o, 0)
	require.NoError(t, err)
	_, err = allocation.NewOutbox(js).Publish(ctx, o)
	require.NoError(t, err)
}

func itemOf(t *testing.T, store *events.OrderStore, orderID string) domain.AllocationItem {
	t.Helper()
	o, _, err := store.Get(context.Background(), orderID)
	require.NoError(t, err)
	return o.Allocations[0]
}

// present reports whether bucket holds a value, a delete marker or any
// revision under key: whether anything of it is left in the server.
func present(t *testing.T, js jetstream.JetStream, bucket, key string) bool {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), bucket)
	require.NoError(t, err)
	_, err = kv.History(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false
	}
	require.NoError(t, err)
	return true
}

func runUntilCleanup(t *testing.T, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
}

// TestRetiredBatchesAndTheirClaimsExpire: once a batch's items are final
// on their orders and the batch is retired, its claims stay for the
// retention and then expire, and so does the marker of the batch's
// removal; a batch whose item Cobo has not finished keeps itself and its
// claim for ever.
func TestRetiredBatchesAndTheirClaimsExpire(t *testing.T) {
	js, store := retained(t)
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: zerolog.Nop()})
	sim.SetItemStatus("M9000", cobo.ItemTransferring)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: hs.URL + "/v2", Signer: signer})
	require.NoError(t, err)
	bt, err := allocation.NewBatcher(context.Background(), js, client, store, allocation.BatcherConfig{
		BatchWait: 20 * time.Millisecond, RecoverEvery: 20 * time.Millisecond, RecoverAfter: 20 * time.Millisecond,
		RetryMax: 200 * time.Millisecond, Retention: keep, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	require.NoError(t, err)
	runUntilCleanup(t, bt.Run)

	item := func(orderID, dest string) domain.AllocationItem {
		return domain.AllocationItem{ID: orderID + ":split:M1001:" + dest, Kind: domain.KindSplit, OrderID: orderID, Backend: domain.BackendCobo,
			TokenID: "ETH_USDT", Amount: decimal.RequireFromString("1.5"), Source: "M1001", Destination: dest, Description: dest + " " + orderID,
			Status: domain.AllocPlanned}
	}
	done := item("O-done", "developer")
	plantOne(t, js, store, done)
	require.Eventually(t, func() bool { return itemOf(t, store, "O-done").Status == domain.AllocCompleted }, 10*time.Second, 10*time.Millisecond)
	requestID := itemOf(t, store, "O-done").RequestID
	require.Eventually(t, func() bool {
		kv, err := js.KeyValue(context.Background(), allocation.BatchesBucket)
		require.NoError(t, err)
		_, err = kv.Get(context.Background(), requestID)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}, 10*time.Second, 10*time.Millisecond, "the batch is retired")
	retired := time.Now()
	require.True(t, present(t, js, allocation.ClaimsBucket, events.Token(done.ID)), "the claim outlives its batch")

	open := item("O-open", "M9000")
	plantOne(t, js, store, open)
	require.Eventually(t, func() bool { return itemOf(t, store, "O-open").Status == domain.AllocPending }, 10*time.Second, 10*time.Millisecond)
	openRequest := itemOf(t, store, "O-open").RequestID

	require.Eventually(t, func() bool {
		return !present(t, js, allocation.ClaimsBucket, events.Token(done.ID)) && !present(t, js, allocation.BatchesBucket, requestID)
	}, 10*time.Second, 50*time.Millisecond, "the retired batch's claim and marker expire")
	require.GreaterOrEqual(t, time.Since(retired), keep-200*time.Millisecond, "the claim is kept the retention")

	time.Sleep(keep + time.Second)
	require.True(t, present(t, js, allocation.ClaimsBucket, events.Token(open.ID)), "a claim of a batch in flight never expires")
	require.True(t, present(t, js, allocation.BatchesBucket, openRequest), "a batch in flight never expires")
	require.Equal(t, domain.AllocPending, itemOf(t, store, "O-open").Status)
}

// TestSettledBitGoRequestsExpire: the persisted request of an item BitGo
// cleared expires after the retention; one whose sends got no definite
// answer, which BitGo may hold, never does.
func TestSettledBitGoRequestsExpire(t *testing.T) {
	js, store := retained(t)
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	sim := bitgosim.New(bitgosim.Config{EnterpriseID: "ent-1", AccessToken: "token", SigningPub: key.PubKey(), Logger: zerolog.Nop()})
	item := func(orderID string) domain.AllocationItem {
		return domain.AllocationItem{ID: orderID + ":split:*:bitgo:" + rigConnection, Kind: domain.KindSplit, OrderID: orderID, Backend: domain.BackendBitGo,
			TokenID: "ETH_USDT", Amount: decimal.RequireFromString("2"), Source: "M1001", Destination: allocation.BitGoPrefix + rigConnection,
			Description: "settlement " + orderID, Status: domain.AllocPlanned}
	}
	cleared, unclear := item("O-cleared"), item("O-unclear")
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method == http.MethodPost && bytes.Contains(body, []byte(allocation.ClientExternalID(unclear.ID))) {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	client, err := bitgo.New(bitgo.Config{BaseURL: hs.URL, EnterpriseID: "ent-1", AccessToken: "token", SigningKey: key, Currencies: bitgo.DefaultCurrencies(),
		Config: httpretry.Config{MaxAttempts: 1, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond}})
	require.NoError(t, err)
	s, err := allocation.NewBitGoSender(context.Background(), js, client, store, allocation.BitGoSenderConfig{
		Poll: 20 * time.Millisecond, Retry: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond, SendTimeout: time.Second,
		Retention: keep, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel),
	})
	require.NoError(t, err)
	runUntilCleanup(t, s.Run)
	plantOne(t, js, store, cleared)
	plantOne(t, js, store, unclear)

	require.Eventually(t, func() bool { return itemOf(t, store, "O-cleared").Status == domain.AllocCompleted }, 10*time.Second, 10*time.Millisecond)
	final := time.Now()
	require.True(t, present(t, js, allocation.BitGoRequestsBucket, events.Token(cleared.ID)))
	require.Eventually(t, func() bool { return !present(t, js, allocation.BitGoRequestsBucket, events.Token(cleared.ID)) },
		10*time.Second, 50*time.Millisecond, "the cleared item's request expires")
	require.GreaterOrEqual(t, time.Since(final), keep-200*time.Millisecond)

	require.True(t, present(t, js, allocation.BitGoRequestsBucket, events.Token(unclear.ID)), "a request BitGo may hold never expires")
	require.Equal(t, domain.AllocPlanned, itemOf(t, store, "O-unclear").Status)
	require.Len(t, sim.Allocations(), 1)
}

// TestRemovedOutboxMarksLeaveNothing: the orphan sweep removes the mark of
// an order with nothing planned; the marker that removal leaves expires
// after the retention, so the outbox bucket does not keep one per order
// for ever.
func TestRemovedOutboxMarksLeaveNothing(t *testing.T) {
	js, store := retained(t)
	ctx := context.Background()
	it := domain.AllocationItem{ID: "O-marked:split:M1001:developer", Kind: domain.KindSplit, OrderID: "O-marked", Backend: domain.BackendCobo,
		TokenID: "ETH_USDT", Amount: decimal.NewFromInt(1), Source: "M1001", Destination: "developer", Description: "d", Status: domain.AllocPlanned}
	plantOne(t, js, store, it)
	o, rev, err := store.Get(ctx, "O-marked")
	require.NoError(t, err)
	o.Allocations[0].Status = domain.AllocCompleted
	_, err = store.Put(ctx, o, rev)
	require.NoError(t, err)

	sw, err := allocation.NewSweeper(ctx, js, store, allocation.SweeperConfig{OrphanAfter: time.Millisecond, Retention: keep})
	require.NoError(t, err)
	mark := events.Token("O-marked")
	require.True(t, present(t, js, allocation.OutboxBucket, mark))
	time.Sleep(10 * time.Millisecond)
	_, err = sw.Sweep(ctx)
	require.NoError(t, err)
	marks, err := js.KeyValue(ctx, allocation.OutboxBucket)
	require.NoError(t, err)
	_, err = marks.Get(ctx, mark)
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound, "the mark is removed")
	require.Eventually(t, func() bool { return !present(t, js, allocation.OutboxBucket, mark) }, 10*time.Second, 50*time.Millisecond,
		"the removal's marker expires")
}
