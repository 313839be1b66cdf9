package e2e_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
	"github.com/paystream/paystream/internal/testutil"
)

// adminJS logs in to the stack's embedded server as the admin user, to
// look at streams and consumers as an operator would.
func adminJS(t *testing.T, s *allocStack) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.ing.NATSURL(), s.ing.Credentials().Login(natsembed.UserAdmin)...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// storedEvents counts the events the stream holds for an order.
func storedEvents(t *testing.T, js jetstream.JetStream, orderID string) uint64 {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, events.StreamName)
	require.NoError(t, err)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.OrderFilter(orderID)))
	require.NoError(t, err)
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitDrained waits until the workers' consumer has processed and acked
// every stored event.
func waitDrained(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, "every stored event processed", func() bool {
		info := testutil.WorkerConsumerInfo(t, js)
		return info.NumPending == 0 && info.NumAckPending == 0
	})
}

// coboOrder reads an order from Cobo's API (the sandbox) with the stack's
// API key.
func (s *allocStack) coboOrder(t *testing.T, orderID string) cobo.OrderData {
	t.Helper()
	c, err := cobo.NewClient(cobo.ClientConfig{BaseURL: s.simURL + "/v2", Signer: s.api, Config: httpretry.Config{MaxAttempts: 1}})
	require.NoError(t, err)
	o, err := c.GetOrder(context.Background(), orderID)
	require.NoError(t, err)
	return o
}

// requireSettledOnce waits until paystream has each order as Cobo does
// (its final status, each completed deposit and late deposit) with every
// allocation completed, then checks each allocation exists exactly once at
// the provider: one item per allocation, named by the order, none twice.
func (s *allocStack) requireSettledOnce(t *testing.T, orderIDs ...string) {
	t.Helper()
	for _, id := range orderIDs {
		want := s.coboOrder(t, id)
		var lates int
		for _, tx := range want.Transactions {
			if tx.IsLate != nil && *tx.IsLate {
				lates++
			}
		}
		testutil.WaitFor(t, 30*time.Second, "order "+id+" settled", func() bool {
			v, ok := getOrder(t, s.ing, id)
			if !ok || string(v.Status) != want.Status || len(v.LatePayments) != lates || len(v.Deposits)+lates != len(want.Transactions) {
				return false
			}
			late := 0
			for _, a := range v.Allocations {
				if a.Status != domain.AllocCompleted {
					return false
				}
				if a.Kind == domain.KindLate {
					late++
				}
			}
			splits := len(v.Allocations) - late
			return late == lates && (want.Status != cobo.OrderCompleted || splits > 0)
		})
		v, _ := getOrder(t, s.ing, id)
		require.Empty(t, v.Unclassified, id)
		items := s.sim.ItemsNaming(id)
		require.Len(t, items, len(v.Allocations), "%s: each allocation exactly once at Cobo", id)
		seen := map[string]bool{}
		for _, it := range items {
			require.False(t, seen[it.Description], "%s: %q twice", id, it.Description)
			seen[it.Description] = true
		}
	}
}

// TestReconciliationCompletesUndeliveredOrders plays orders through the
// sandbox, some of which never get a single webhook (Cobo gave up on them,
// as after a long outage), while Cobo's order API and list know them. The
// worker's reconciliation alone completes them and allocates them exactly
// once, splits and late credits included. When their webhooks finally
// arrive after the repair, nothing changes: no second allocation, the
// same order state.
func TestReconciliationCompletesUndeliveredOrders(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.reconcile = reconcile.Config{Every: 300 * time.Millisecond}
	w := s.startWorker(t, nil)
	admin := adminJS(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := payer.Config{
		WebhookURL: "http://" + s.ing.PublicAddr() + ingest.WebhookPath, WebhookKey: s.signer.Key,
		Orders: 12, Undelivered: 5, Seed: 12, LateRatio: 0.5, Duplicates: 0.2, Shuffle: true, Sim: s.sim,
		Start: time.Now(), Logger: zerolog.Nop(),
	}
	st, err := payer.Run(ctx, cfg)
	require.NoError(t, err)
	require.Zero(t, st.Failed)
	undelivered := st.UndeliveredOrderIDs
	require.Len(t, undelivered, 5)

	var all []string
	for _, o := range listOrders(t, s) {
		all = append(all, o.OrderID)
	}
	require.Len(t, all, 12)
	s.requireSettledOnce(t, all...)
	var completed, late int
	for _, id := range undelivered {
		require.Zero(t, storedEvents(t, admin, id), "%s: no webhook of it was ever stored", id)
		v, _ := getOrder(t, s.ing, id)
		if v.Status == domain.StatusCompleted {
			completed++
		}
		late += len(v.LatePayments)
	}
	require.Positive(t, completed, "seed 12 completes undelivered orders, so reconciliation plans splits")
	require.Positive(t, late, "and credits late payments")
	require.GreaterOrEqual(t, metricValue(t, w, "paystream_reconcile_orders_repaired_total"), float64(len(undelivered)))
	require.Positive(t, metricValue(t, w, "paystream_reconcile_orders_checked_total"))
	require.Less(t, metricValue(t, w, "paystream_reconcile_point_age_seconds"), 30.0)

	// Cobo's webhooks of the repaired orders arrive after all (an operator
	// resent them from Cobo's portal): nothing changes.
	before := map[string]string{}
	for _, id := range undelivered {
		before[id] = viewOf(t, s, id)
	}
	items := len(s.sim.Items())
	cfg.Undelivered, cfg.Duplicates = 0, 0
	st, err = payer.Run(ctx, cfg)
	require.NoError(t, err)
	require.Zero(t, st.Failed)
	for _, id := range undelivered {
		require.Positive(t, storedEvents(t, admin, id), "%s's webhooks are stored now", id)
	}
	waitDrained(t, admin)
	// Give batchers and the sweep time to (wrongly) send anything.
	time.Sleep(time.Second)
	require.Len(t, s.sim.Items(), items, "no second allocation")
	for _, id := range undelivered {
		require.JSONEq(t, before[id], viewOf(t, s, id), "%s: the webhooks changed nothing", id)
	}
	s.requireSettledOnce(t, all...)
}

// waitAllocated waits until the order has n allocations, all completed.
func waitAllocated(t *testing.T, s *allocStack, orderID string, n int) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, orderID+" allocated", func() bool {
		v, ok := getOrder(t, s.ing, orderID)
		if !ok || len(v.Allocations) != n {
			return false
		}
		for _, a := range v.Allocations {
			if a.Status != domain.AllocCompleted {
				return false
			}
		}
		return true
	})
}

// viewOf is the order's public view as JSON.
func viewOf(t *testing.T, s *allocStack, orderID string) string {
	t.Helper()
	v, ok := getOrder(t, s.ing, orderID)
	require.True(t, ok, orderID)
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// listOrders reads Cobo's whole order list with the stack's API key.
func listOrders(t *testing.T, s *allocStack) []cobo.OrderData {
	t.Helper()
	c, err := cobo.NewClient(cobo.ClientConfig{BaseURL: s.simURL + "/v2", Signer: s.api, Config: httpretry.Config{MaxAttempts: 1}})
	require.NoError(t, err)
	var out []cobo.OrderData
	req := cobo.ListOrdersRequest{Limit: cobo.MaxListLimit}
	for {
		l, err := c.ListOrders(context.Background(), req)
		require.NoError(t, err)
		out = append(out, l.Orders...)
		if req.After = l.Next(req.Limit); req.After == "" {
			return out
		}
	}
}

// TestConcurrentReconciliationAllocatesOnce has two workers reconcile the
// same undelivered orders at the same moment, several times: every order
// is repaired by exactly one of them and allocated once.
func TestConcurrentReconciliationAllocatesOnce(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.reconcile = reconcile.Config{Off: true, PageSize: 3}
	ws := []*testutil.RunningWorker{s.startWorker(t, nil), s.startWorker(t, nil)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := payer.Run(ctx, payer.Config{
		WebhookURL: "http://" + s.ing.PublicAddr() + ingest.WebhookPath, WebhookKey: s.signer.Key,
		Orders: 8, Undelivered: 8, Seed: 5, LateRatio: 0.5, Sim: s.sim, Start: time.Now(), Logger: zerolog.Nop(),
	})
	require.NoError(t, err)
	require.Zero(t, st.Sent, "nothing was delivered")

	for round := range 3 {
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for _, w := range ws {
			wg.Go(func() {
				<-gate
				// A past Since, so that every round goes over every order.
				if _, err := w.W.Reconciler().Pass(ctx, reconcile.PassOptions{Since: time.Now().Add(-6 * time.Hour)}); err != nil {
					t.Errorf("round %d: %v", round, err)
				}
			})
		}
		close(gate)
		wg.Wait()
	}
	s.requireSettledOnce(t, st.UndeliveredOrderIDs...)
	repaired := 0.0
	for _, w := range ws {
		repaired += metricValue(t, w, "paystream_reconcile_orders_repaired_total")
	}
	require.Equal(t, float64(len(st.UndeliveredOrderIDs)), repaired, "each order repaired by exactly one pass of one worker")
}

// TestLatePaymentReconciledAndDeliveredIsCreditedOnce: Cobo's order API
// names transactions by tx ids that differ from the webhooks'
// transaction_id (whether they are equal is not documented), with the
// same on-chain hashes. An order reconciled first and then delivered by
// webhook, and one delivered first and then reconciled, each get their
// late payment credited once.
func TestLatePaymentReconciledAndDeliveredIsCreditedOnce(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.reconcile = reconcile.Config{Off: true}
	w := s.startWorker(t, nil)
	admin := adminJS(t, s)
	ctx := context.Background()
	notLate, late := false, true
	for _, id := range []string{"O-rec-first", "O-hook-first"} {
		o := testutil.CoboOrder(id, "M1001", "Completed", time.Now().Unix(), "102.000001",
			testutil.CoboTx("cobo-dep-"+id, "0xdep-"+id, "102.000001", &notLate),
			testutil.CoboTx("cobo-late-"+id, "0xlate-"+id, "5.123456", &late))
		o.CreatedTimestamp = cobo.Int64(time.Now().Add(-time.Hour).Unix())
		s.sim.PutOrder(o)
	}
	webhooks := func(id string) [][]byte {
		return [][]byte{
			testutil.OrderEvent(id+"-pending", id, "M1001", "Pending", 100, "0"),
			testutil.TransactionEventWithHash(id+"-txc", "completed", id, "wh-dep-"+id, "0xdep-"+id, "102.000001"),
			testutil.OrderEvent(id+"-completed", id, "M1001", "Completed", 200, "102.000001"),
			testutil.TransactionEventWithHash(id+"-late", "late", id, "wh-late-"+id, "0xlate-"+id, "5.123456"),
			testutil.LateNoticeEvent(id+"-notice", id, "M1001", "Completed", 300, "102", "wh-late-"+id, "0xlate-"+id, "5.12"),
		}
	}
	// The webhooks of one order arrive and are credited first.
	for _, ev := range webhooks("O-hook-first") {
		postUntilStored(t, s.signer, s.ing, ev)
	}
	waitDrained(t, admin)
	waitAllocated(t, s, "O-hook-first", 3)

	// Reconciliation: the other order is missing, the first is not (its
	// transactions match Cobo's by hash).
	var found []reconcile.Finding
	sum, err := w.W.Reconciler().Pass(ctx, reconcile.PassOptions{Report: func(f reconcile.Finding) error {
		found = append(found, f)
		return nil
	}})
	require.NoError(t, err)
	require.Equal(t, 1, sum.Missing, "%+v", found)
	require.Equal(t, "O-rec-first", found[0].OrderID)
	require.Equal(t, reconcile.ResultRepaired, found[0].Result)
	require.Equal(t, []string{"cobo-late-O-rec-first"}, found[0].LateRecorded)
	waitAllocated(t, s, "O-rec-first", 3)

	// Then its webhooks arrive, under their own transaction ids.
	for _, ev := range webhooks("O-rec-first") {
		postUntilStored(t, s.signer, s.ing, ev)
	}
	waitDrained(t, admin)
	sum, err = w.W.Reconciler().Pass(ctx, reconcile.PassOptions{})
	require.NoError(t, err)
	require.Zero(t, sum.Missing)
	time.Sleep(500 * time.Millisecond)

	for _, id := range []string{"O-rec-first", "O-hook-first"} {
		v, _ := getOrder(t, s.ing, id)
		require.Len(t, v.LatePayments, 1, id)
		require.Len(t, v.Deposits, 1, id)
		require.Empty(t, v.Unclassified, id)
		items := s.sim.ItemsNaming(id)
		require.Len(t, items, 3, "%s: commission, referral and one late credit", id)
		credits := 0
		for _, it := range items {
			if strings.HasPrefix(it.Description, "late payment ") {
				credits++
				require.Equal(t, "5.123456", it.Amount, id)
			}
		}
		require.Equal(t, 1, credits, id)
	}
}
