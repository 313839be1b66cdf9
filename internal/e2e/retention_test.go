package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// lateWebhookAt is a payment.transaction.late webhook whose transaction
// Cobo created at at.
func lateWebhookAt(eventID, orderID, txID, amount string, at time.Time) []byte {
	return bytes.ReplaceAll(testutil.TransactionEvent(eventID, "late", orderID, txID, amount),
		[]byte("1700000500000"), []byte(strconv.FormatInt(at.UnixMilli(), 10)))
}

// heldKey reports whether bucket still holds anything under key.
func heldKey(t *testing.T, js jetstream.JetStream, bucket, key string) bool {
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

// TestLatePaymentOfExpiredOrderAllocatesOnce runs the whole stack with
// short windows (events and intents kept 5 s and deduplicated 1 s,
// settled state 10 s, a horizon 6 s back). An order completes, its Cobo and BitGo splits and a late payment
// are allocated; then its state, its claims, its batches and its BitGo
// request all expire. A new late payment arrives: the order comes back
// through the fetch from Cobo, and only the new payment is credited, under
// its new item id. Its old webhooks arriving again and a reconciliation
// pass over Cobo's whole record of the order (with the old late payment)
// plan nothing more: at Cobo and at BitGo every allocation of the order's
// two lives exists exactly once.
func TestLatePaymentOfExpiredOrderAllocatesOnce(t *testing.T) {
	t.Parallel()
	s := startAllocStackWith(t, cobosim.Config{}, ingest.Config{Stream: events.StreamConfig{MaxAge: 5 * time.Second, DuplicateWindow: time.Second}})
	s.addBitGo(t, bitgosim.Config{})
	s.reconcile = reconcile.Config{Off: true}
	// The workers' windows in the same proportions as the defaults: intents
	// deduplicated for 1 s and kept 5 s, well inside the retention.
	s.stream = events.StreamConfig{MaxAge: 5 * time.Second, DuplicateWindow: time.Second,
		Retention: events.Retention{Keep: 10 * time.Second, Margin: 4 * time.Second}}
	w := s.startWorker(t, nil)
	admin := adminJS(t, s)
	ctx := context.Background()

	const id = "O-expiring"
	created := time.Now().Add(-time.Second)
	late1At := created.Add(500 * time.Millisecond)
	notLate, late := false, true
	order := testutil.CoboOrder(id, "M1001", "Completed", time.Now().Unix(), "102.000001",
		testutil.CoboTx(id+"-tx1", "", "102.000001", &notLate),
		testutil.CoboTx(id+"-tx2", "", "5.123456", &late))
	order.CreatedTimestamp = cobo.Int64(created.Unix())
	order.Transactions[1].CreatedTimestamp = cobo.Int64(late1At.UnixMilli())
	s.sim.PutOrder(order)
	for _, ev := range orderEvents(id) {
		postUntilStored(t, s.signer, s.ing, ev)
	}
	waitAllocated(t, s, id, 4)
	first, _ := getOrder(t, s.ing, id)
	require.Nil(t, first.Horizon, "the first life is planned in full")

	// Everything settled about the order expires with the retention.
	testutil.WaitFor(t, 40*time.Second, "the order's state, claims, batches and BitGo request expire", func() bool {
		if _, ok := getOrder(t, s.ing, id); ok {
			return false
		}
		for _, it := range first.Allocations {
			if heldKey(t, admin, allocation.ClaimsBucket, events.Token(it.ID)) || heldKey(t, admin, allocation.BitGoRequestsBucket, events.Token(it.ID)) {
				return false
			}
			if it.Backend == domain.BackendCobo && heldKey(t, admin, allocation.BatchesBucket, it.RequestID) {
				return false
			}
		}
		return true
	})

	// A new late payment, 7 USDT, made now.
	late2At := time.Now()
	order.UpdatedTimestamp = cobo.Int64(late2At.Unix())
	tx3 := testutil.CoboTx(id+"-tx3", "", "7", &late)
	tx3.CreatedTimestamp = cobo.Int64(late2At.UnixMilli())
	order.Transactions = append(order.Transactions, tx3)
	s.sim.PutOrder(order)
	postUntilStored(t, s.signer, s.ing, lateWebhookAt(id+"-late3", id, id+"-tx3", "7", late2At))
	testutil.WaitFor(t, 30*time.Second, "the new late payment credited", func() bool {
		v, ok := getOrder(t, s.ing, id)
		if !ok {
			return false
		}
		credited := false
		for _, a := range v.Allocations {
			if !a.Final() {
				return false
			}
			credited = credited || a.ID == id+":late:"+id+"-tx3"
		}
		return credited
	})

	// The order's old webhooks again, and Cobo's whole record of it.
	for _, ev := range [][]byte{
		testutil.OrderEvent(id+"-completed-again", id, "M1001", "Completed", 400, "102.000001"),
		testutil.TransactionEvent(id+"-late-again", "late", id, id+"-tx2", "5.123456"),
		lateWebhookAt(id+"-late3-again", id, id+"-tx3", "7", late2At),
	} {
		postUntilStored(t, s.signer, s.ing, ev)
	}
	waitDrained(t, admin)
	sum, err := w.W.Reconciler().Pass(ctx, reconcile.PassOptions{})
	require.NoError(t, err)
	testutil.WaitFor(t, 30*time.Second, "every item of the order final", func() bool {
		v, ok := getOrder(t, s.ing, id)
		for _, a := range v.Allocations {
			ok = ok && a.Final()
		}
		return ok
	})
	time.Sleep(500 * time.Millisecond)

	got := map[string]int{}
	for _, it := range s.sim.ItemsNaming(id) {
		got[it.Description]++
	}
	require.Equal(t, map[string]int{
		"platform commission " + id:                   1,
		"referral " + id:                              1,
		"late payment " + id + "-tx2 for order " + id: 1,
		"late payment " + id + "-tx3 for order " + id: 1,
	}, got, "every Cobo allocation of the order's two lives exactly once")
	require.Len(t, s.bitgo.sim.AllocationsNaming(id), 1, "the BitGo split exactly once")

	v, ok := getOrder(t, s.ing, id)
	require.True(t, ok)
	require.NotNil(t, v.Horizon)
	require.Contains(t, v.SplitsSkipped, "not after its horizon")
	require.Len(t, v.Allocations, 1)
	require.Equal(t, id+":late:"+id+"-tx3", v.Allocations[0].ID)
	require.Len(t, v.Unclassified, 1)
	require.Equal(t, domain.UnclassifiedBeforeHorizon, v.Unclassified[0].Reason)
	require.Equal(t, id+"-tx2", v.Unclassified[0].TransactionID)
	require.Equal(t, 1, sum.Checked)
	require.Equal(t, 1, sum.Unresolved, "the old late payment stays for an operator")
}
