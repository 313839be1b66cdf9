package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// Forged allocation intents: anything able to publish on
// paystream.alloc.<backend>.<order> must not be able to move funds. The
// senders send the order's copy of a planned item and reject the rest.

func TestForgedCoboIntentForUnknownOrderIsRejected(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	w := s.startWorker(t, nil)
	js := s.jetStream(t)
	forged := domain.AllocationItem{
		ID: "O-ghost:split:0:attacker-merchant", Kind: domain.KindSplit, OrderID: "O-ghost", Backend: domain.BackendCobo,
		TokenID: "ETH_USDT", Amount: decimal.RequireFromString("999999"), Source: "developer",
		Destination: "attacker-merchant", Description: "forged", Status: domain.AllocPlanned,
	}
	publishIntent(t, js, "paystream.alloc.cobo.O-ghost", "forged-ghost-1", forged)

	testutil.WaitFor(t, 10*time.Second, "the forged intent to be handled", func() bool {
		return rejectedIntents(t, w, "cobo", "no_order") > 0 || len(s.sim.Batches()) > 0
	})
	require.Empty(t, s.sim.Items(), "a forged intent must never reach Cobo")
	require.Equal(t, 1, rejectedIntents(t, w, "cobo", "no_order"))
	requireIntentsAckedOnce(t, js, allocation.BatcherConsumer, 1)

	// The batcher still allocates real orders, and nothing else reached
	// Cobo (requireAllocatedOnce fails on any unexpected item).
	sendHistories(t, s, "O-after-ghost")
	s.requireAllocatedOnce(t, "O-after-ghost")
	require.Equal(t, 1, rejectedIntents(t, w, "cobo", "no_order"))
}

func TestForgedCoboIntentForRealItemSendsTheOrdersCopy(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	w := s.startWorker(t, nil)
	js := s.jetStream(t)
	o := s.plantPlannedOrder(t, js, "O-forged")
	genuine := o.Allocations[0]
	require.Equal(t, "developer", genuine.Destination)
	forged := genuine
	forged.Amount = decimal.RequireFromString("999999")
	forged.Destination = "attacker-merchant"
	publishIntent(t, js, "paystream.alloc.cobo.O-forged", "forged-real-1", forged)

	testutil.WaitFor(t, 10*time.Second, "the forged intent to be handled", func() bool {
		return rejectedIntents(t, w, "cobo", "mismatch") > 0 || len(s.sim.Batches()) > 0
	})
	require.Empty(t, s.sim.Items(), "the forged amount and destination must never reach Cobo")
	require.Equal(t, 1, rejectedIntents(t, w, "cobo", "mismatch"))

	// The genuine intents, as the worker's outbox publishes them: each
	// item reaches Cobo exactly once, as the order has it.
	_, err := allocation.NewOutbox(js).Publish(context.Background(), o)
	require.NoError(t, err)
	s.requireAllocatedOnce(t, "O-forged")
	for _, it := range s.sim.Items() {
		require.NotEqual(t, "attacker-merchant", it.DestinationAccount)
		if it.Description == genuine.Description {
			require.Equal(t, genuine.Destination, it.DestinationAccount)
			require.Equal(t, genuine.Source, it.SourceAccount)
			require.True(t, genuine.Amount.Equal(decimal.RequireFromString(it.Amount)), "amount %s", it.Amount)
		}
	}
	require.Equal(t, 1, rejectedIntents(t, w, "cobo", "mismatch"))
	requireIntentsAckedOnce(t, js, allocation.BatcherConsumer, 1+len(o.Allocations))
}

func TestForgedBitGoIntentForUnknownOrderIsRejected(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	w := s.startWorker(t, nil)
	js := s.jetStream(t)
	forged := domain.AllocationItem{
		ID: "O-bg-ghost:split:2:bitgo:attacker-conn", Kind: domain.KindSplit, OrderID: "O-bg-ghost", Backend: domain.BackendBitGo,
		TokenID: "ETH_USDT", Amount: decimal.RequireFromString("999999"), Source: "M1001",
		Destination: "bitgo:attacker-conn", Description: "forged", Status: domain.AllocPlanned,
	}
	publishIntent(t, js, "paystream.alloc.bitgo.O-bg-ghost", "forged-bg-ghost-1", forged)

	testutil.WaitFor(t, 10*time.Second, "the forged intent to be rejected", func() bool {
		return rejectedIntents(t, w, "bitgo", "no_order") > 0 || len(s.bitgo.sim.Allocations()) > 0
	})
	require.Empty(t, s.bitgo.sim.Allocations(), "a forged intent must never reach BitGo")
	require.Equal(t, 1, rejectedIntents(t, w, "bitgo", "no_order"))
	requireIntentsAckedOnce(t, js, allocation.BitGoConsumer, 1)
}

func TestForgedBitGoIntentForRealItemSendsTheOrdersCopy(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	w := s.startWorker(t, nil)
	js := s.jetStream(t)
	o := s.plantPlannedOrder(t, js, "O-bg-forged")
	var forged domain.AllocationItem
	for _, it := range o.Allocations {
		if it.Backend == domain.BackendBitGo {
			forged = it
		}
	}
	require.NotEmpty(t, forged.ID, "the rules plan a BitGo item")
	forged.Amount = decimal.RequireFromString("999999")
	forged.Destination = "bitgo:attacker-conn"
	publishIntent(t, js, "paystream.alloc.bitgo.O-bg-forged", "forged-bg-real-1", forged)

	testutil.WaitFor(t, 10*time.Second, "the forged intent to be handled", func() bool {
		return rejectedIntents(t, w, "bitgo", "mismatch") > 0 || len(s.bitgo.sim.Allocations()) > 0
	})
	require.Empty(t, s.bitgo.sim.Allocations(), "the forged amount and connection must never reach BitGo")
	require.Equal(t, 1, rejectedIntents(t, w, "bitgo", "mismatch"))

	// The genuine intents: BitGo gets the order's 2 USDT to conn-1, once.
	_, err := allocation.NewOutbox(js).Publish(context.Background(), o)
	require.NoError(t, err)
	s.requireBitGoOnce(t, domain.AllocCompleted, "O-bg-forged")
	require.Equal(t, 1, rejectedIntents(t, w, "bitgo", "mismatch"))
	requireIntentsAckedOnce(t, js, allocation.BitGoConsumer, 2)
}

// jetStream connects to the stack's NATS as the worker user, which may
// publish intents: a leaked worker credential is all a forger needs.
func (s *allocStack) jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.ing.NATSURL(), s.ing.Credentials().Login(natsembed.UserWorker)...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// plantPlannedOrder writes, as a worker's commit would, a completed order
// with the items s.rules plan for an orderEvents history, all still
// planned and not yet published. Planting it lets a test publish an intent
// before the outbox does.
func (s *allocStack) plantPlannedOrder(t *testing.T, js jetstream.JetStream, orderID string) *domain.Order {
	t.Helper()
	d := func(v string) decimal.NullDecimal { return decimal.NewNullDecimal(decimal.RequireFromString(v)) }
	o := &domain.Order{OrderID: orderID, Status: domain.StatusCompleted, SplitsPlanned: true, Snapshot: &domain.Snapshot{
		Status: domain.StatusCompleted, MerchantID: "M1001", PricingCurrency: "USD", PricingAmount: d("100"), FeeAmount: d("2"),
		PayableCurrency: "ETH_USDT", PayableAmount: d("102"), ReceivedTokenAmount: d("102.000001"), UpdatedTimestamp: 200,
	}}
	lp := domain.LatePayment{TransactionID: orderID + "-tx2", Amount: decimal.RequireFromString("5.123456"), TokenID: "ETH_USDT", Precise: true}
	o.LatePayments = []domain.LatePayment{lp}
	o.Allocations = append(s.rules.OnCompleted(o), s.rules.OnLatePayment(o, lp)...)
	for _, it := range o.Allocations {
		require.Equal(t, domain.AllocPlanned, it.Status, it.ID)
	}
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, events.OrdersBucket)
	require.NoError(t, err)
	_, err = events.NewOrderStore(kv).Put(ctx, o, 0)
	require.NoError(t, err)
	return o
}

// publishIntent publishes it on subject with message id msgID, bypassing
// the outbox.
func publishIntent(t *testing.T, js jetstream.JetStream, subject, msgID string, it domain.AllocationItem) {
	t.Helper()
	b, err := json.Marshal(it)
	require.NoError(t, err)
	msg := nats.NewMsg(subject)
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	_, err = js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
}

// rejectedIntents reads paystream_allocation_intents_rejected_total for
// backend and reason from the worker's metrics; 0 when it has no sample.
func rejectedIntents(t *testing.T, w *testutil.RunningWorker, backend, reason string) int {
	t.Helper()
	return int(metricValue(t, w, fmt.Sprintf("paystream_allocation_intents_rejected_total{backend=%q,reason=%q}", backend, reason)))
}

// requireIntentsAckedOnce waits until consumer has no intent left pending
// or unacked, then checks it delivered exactly n messages: every intent
// was acked on its first delivery, none redelivered.
func requireIntentsAckedOnce(t *testing.T, js jetstream.JetStream, consumer string, n int) {
	t.Helper()
	var info *jetstream.ConsumerInfo
	testutil.WaitFor(t, 10*time.Second, "intents of "+consumer+" acked", func() bool {
		c, err := js.Consumer(context.Background(), allocation.IntentStream, consumer)
		require.NoError(t, err)
		info, err = c.Info(context.Background())
		require.NoError(t, err)
		return info.NumPending == 0 && info.NumAckPending == 0
	})
	require.EqualValues(t, n, info.Delivered.Consumer, "deliveries of %s", consumer)
}
