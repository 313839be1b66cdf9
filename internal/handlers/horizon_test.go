package handlers_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/testutil"
)

// lateAt is a payment.transaction.late webhook whose transaction Cobo
// created at at.
func lateAt(eventID, orderID, txID, amount string, at time.Time) []byte {
	return bytes.ReplaceAll(testutil.TransactionEvent(eventID, "late", orderID, txID, amount),
		[]byte("1700000500000"), []byte(strconv.FormatInt(at.UnixMilli(), 10)))
}

// settleItems records every planned item of the order completed, as the
// senders do once the provider made them.
func settleItems(t *testing.T, store *events.OrderStore, orderID string) {
	t.Helper()
	ctx := context.Background()
	o, rev, err := store.Get(ctx, orderID)
	require.NoError(t, err)
	for i := range o.Allocations {
		o.Allocations[i].Status = domain.AllocCompleted
	}
	_, err = store.Put(ctx, o, rev)
	require.NoError(t, err)
}

// TestExpiredOrderIsNeverPlannedAgain: an order completes, its split and
// a late payment are planned and made, and its state expires with the
// retention. A new late payment then brings the order back through the
// fetch from Cobo: only the new payment is credited, under its own item
// id. Neither the completion splits (Cobo created the order before the
// new state's horizon) nor the late payment made before it (recorded for
// an operator) are planned again, whether the order's webhooks come again
// or reconciliation brings Cobo's whole record of it.
func TestExpiredOrderIsNeverPlannedAgain(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	cfg := events.StreamConfig{Retention: events.Retention{Keep: 2 * time.Second, Margin: time.Second}}
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	store, err := events.OpenOrderStore(ctx, js, kv, cfg)
	require.NoError(t, err)

	const orderID = "O-expired"
	created := time.Now().Add(-time.Second)
	l1At := created.Add(500 * time.Millisecond)
	coboOrder := testutil.CoboOrder(orderID, "M1001", "Completed", 300, "102.000001",
		testutil.CoboTx("tx1", "0xdep", "102.000001", ptr(false)))
	coboOrder.CreatedTimestamp = cobo.Int64(created.Unix())
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{orderID: providerFor(coboOrder)}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))

	planned := map[string]int{}
	handle := func(body []byte) handlers.Outcome {
		t.Helper()
		out, err := h.Handle(ctx, delivery(t, body))
		require.NoError(t, err)
		for _, it := range out.Planned {
			planned[it.ID]++
		}
		return out
	}
	completed := testutil.OrderEvent(orderID+"-completed", orderID, "M1001", "Completed", 200, "102.000001")
	handle(completed)
	handle(lateAt(orderID+"-late1", orderID, "tx-l1", "5.123456", l1At))
	require.Equal(t, map[string]int{orderID + ":split:*:developer": 1, orderID + ":late:tx-l1": 1}, planned)
	settleItems(t, store, orderID)
	require.Eventually(t, func() bool {
		_, _, err := store.Get(ctx, orderID)
		return errors.Is(err, domain.ErrNotFound)
	}, 10*time.Second, 50*time.Millisecond, "the settled order expires")

	// A new late payment: the order comes back from Cobo's order API.
	out := handle(lateAt(orderID+"-late2", orderID, "tx-l2", "7", time.Now()))
	require.Len(t, out.Planned, 1)
	require.Equal(t, orderID+":late:tx-l2", out.Planned[0].ID, "a new payment's item id is new")
	require.NotNil(t, out.Order.Horizon)
	require.True(t, out.Order.SplitsPlanned)
	require.Contains(t, out.Order.SplitsSkipped, "not after its horizon")

	// Everything Cobo says again about the order plans nothing more.
	handle(completed)
	handle(testutil.OrderEvent(orderID+"-completed-again", orderID, "M1001", "Completed", 300, "102.000001"))
	handle(lateAt(orderID+"-late1-again", orderID, "tx-l1", "5.123456", l1At))
	handle(lateAt(orderID+"-late2-again", orderID, "tx-l2", "7", time.Now()))
	late := true
	listed := testutil.CoboOrder(orderID, "M1001", "Completed", 400, "102.000001",
		testutil.CoboTx("tx1", "0xdep", "102.000001", ptr(false)),
		testutil.CoboTx("tx-l1", "0xl1", "5.123456", &late),
		testutil.CoboTx("tx-l2", "0xl2", "7", &late))
	listed.CreatedTimestamp = coboOrder.CreatedTimestamp
	listed.Transactions[1].CreatedTimestamp = cobo.Int64(l1At.UnixMilli())
	listed.Transactions[2].CreatedTimestamp = cobo.Int64(time.Now().UnixMilli())
	for range 2 {
		rout, err := h.Reconcile(ctx, listed)
		require.NoError(t, err)
		for _, it := range rout.Planned {
			planned[it.ID]++
		}
	}
	require.Equal(t, map[string]int{orderID + ":split:*:developer": 1, orderID + ":late:tx-l1": 1, orderID + ":late:tx-l2": 1}, planned,
		"every item is planned once over the order's two lives")

	o, _, err := store.Get(ctx, orderID)
	require.NoError(t, err)
	require.Len(t, o.Unclassified, 1)
	require.Equal(t, "tx-l1", o.Unclassified[0].TransactionID)
	require.Equal(t, domain.UnclassifiedBeforeHorizon, o.Unclassified[0].Reason)
	require.Len(t, o.LatePayments, 1, "only the payment after the horizon is credited")
}

// TestOrderWithoutHorizonIsPlannedAsBefore: an order whose state was never
// lost plans its splits whatever its age at Cobo (the test fixtures' orders
// are from 2023).
func TestOrderWithoutHorizonIsPlannedAsBefore(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	cfg := events.StreamConfig{}
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	store, err := events.OpenOrderStore(ctx, js, kv, cfg)
	require.NoError(t, err)
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(fetcher{}))
	out, err := h.Handle(ctx, delivery(t, testutil.OrderEvent("e1", "O-old", "M1001", "Completed", 200, "102.000001")))
	require.NoError(t, err)
	require.Len(t, out.Planned, 1)
	require.Nil(t, out.Order.Horizon)
	require.Empty(t, out.Order.SplitsSkipped)
}

// TestNewOrderInAMatureBucketIsPlanned: once state can have expired every
// new order gets the horizon, and a new order is planned in full: Cobo
// created it after the horizon, as its order API says or, when that
// answer lacks the time, as its signed webhook does. With the time given
// nowhere, the splits are skipped, and the order says why.
func TestNewOrderInAMatureBucketIsPlanned(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	cfg := events.StreamConfig{Retention: events.Retention{Keep: 2 * time.Second, Margin: time.Second}}
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(t, err)
	store, err := events.OpenOrderStore(ctx, js, kv, cfg)
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond)

	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	completedNow := func(orderID string, webhookCreated bool) []byte {
		created := int64(0)
		if webhookCreated {
			created = time.Now().Unix()
		}
		body := testutil.OrderEvent(orderID+"-completed", orderID, "M1001", "Completed", 200, "102.000001")
		return bytes.ReplaceAll(body, []byte(`"created_timestamp":1700000000`), []byte(`"created_timestamp":`+strconv.FormatInt(created, 10)))
	}
	for _, c := range []struct {
		orderID             string
		apiTime, hookTime   bool
		planned             int
		skippedContainsWhat string
	}{
		{"O-api-time", true, false, 1, ""},
		{"O-hook-time", false, true, 1, ""},
		{"O-no-time", false, false, 0, "an unknown time"},
	} {
		o := testutil.CoboOrder(c.orderID, "M1001", "Completed", 200, "102.000001")
		o.CreatedTimestamp = 0
		if c.apiTime {
			o.CreatedTimestamp = cobo.Int64(time.Now().Unix())
		}
		api.orders[c.orderID] = providerFor(o)
		out, err := h.Handle(ctx, delivery(t, completedNow(c.orderID, c.hookTime)))
		require.NoError(t, err)
		require.NotNil(t, out.Order.Horizon, c.orderID)
		require.Len(t, out.Planned, c.planned, c.orderID)
		if c.skippedContainsWhat == "" {
			require.Empty(t, out.Order.SplitsSkipped, c.orderID)
		} else {
			require.Contains(t, out.Order.SplitsSkipped, c.skippedContainsWhat, c.orderID)
		}
	}
}
