package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/testutil"
)

// newStore returns an order store on a real embedded JetStream bucket.
func newStore(t *testing.T) *events.OrderStore {
	t.Helper()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	kv, err := events.EnsureOrdersBucket(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	return events.NewOrderStore(kv)
}

func delivery(t *testing.T, body []byte) cobo.Delivery {
	t.Helper()
	env, err := cobo.ParseEnvelope(body)
	require.NoError(t, err)
	return cobo.Delivery{Envelope: env, Body: body}
}

// lifecycle is one order's realistic events, renamed for order id.
func lifecycle(orderID string) [][]byte {
	return [][]byte{
		testutil.OrderEvent(orderID+"-pending", orderID, "M1001", "Pending", 100, "0"),
		testutil.TransactionEvent(orderID+"-txc", "completed", orderID, orderID+"-tx1", "102.000001"),
		testutil.OrderEvent(orderID+"-completed", orderID, "M1001", "Completed", 200, "102.000001"),
		testutil.OrderUpdatedEvent(orderID+"-upd", orderID, "M1001", "Completed", 200, "102", "", ""),
		testutil.TransactionEvent(orderID+"-late", "late", orderID, orderID+"-tx2", "5.123456"),
		testutil.OrderUpdatedEvent(orderID+"-notice", orderID, "M1001", "Completed", 300, "102", orderID+"-tx2", "5.12"),
	}
}

func permutations(n int) [][]int {
	var out [][]int
	var rec func(p []int, used []bool)
	rec = func(p []int, used []bool) {
		if len(p) == n {
			out = append(out, append([]int(nil), p...))
			return
		}
		for i := 0; i < n; i++ {
			if !used[i] {
				used[i] = true
				rec(append(p, i), used)
				used[i] = false
			}
		}
	}
	rec(nil, make([]bool, n))
	return out
}

func viewJSON(t *testing.T, o *domain.Order, orderID string) string {
	t.Helper()
	v := o.View()
	v.OrderID = "X"
	b, err := json.Marshal(v)
	require.NoError(t, err)
	// Ids embed the order id; normalise them so permutations compare.
	return string(replaceAll(b, orderID, "X"))
}

func replaceAll(b []byte, old, new string) []byte {
	return []byte(strings.ReplaceAll(string(b), old, new))
}

func TestEveryPermutationGivesTheSameState(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	h := handlers.New(store)
	ctx := context.Background()
	perms := permutations(len(lifecycle("x")))
	require.Len(t, perms, 720)

	var want string
	for i, p := range perms {
		orderID := fmt.Sprintf("O-perm-%d", i)
		evs := lifecycle(orderID)
		tl := newTally()
		for _, idx := range p {
			// Each event twice: the duplicate must change nothing.
			for range 2 {
				require.True(t, tl.handle(t, h, orderID, evs[idx]))
			}
		}
		require.Equal(t, 1, tl.completed[orderID], "permutation %v", p)
		require.Equal(t, 1, tl.late[orderID], "permutation %v", p)
		o, _, err := store.Get(ctx, orderID)
		require.NoError(t, err)
		got := viewJSON(t, o, orderID)
		if want == "" {
			want = got
		}
		require.JSONEq(t, want, got, "permutation %v", p)
	}

	o, _, err := store.Get(ctx, "O-perm-0")
	require.NoError(t, err)
	v := o.View()
	require.Equal(t, domain.StatusCompleted, v.Status)
	require.Equal(t, "M1001", v.MerchantID)
	require.Equal(t, "ETH_USDT", v.PayableCurrency)
	// Full precision from the advanced event wins over the truncated notice.
	require.Equal(t, "102.000001", v.ReceivedTokenAmount.Decimal.String())
	require.Equal(t, "100", v.PricingAmount.Decimal.String())
	require.Equal(t, "2", v.FeeAmount.Decimal.String())
	require.EqualValues(t, 300, v.UpdatedTimestamp)
	require.Len(t, v.LatePayments, 1)
	require.Equal(t, "O-perm-0-tx2", v.LatePayments[0].TransactionID)
	require.True(t, decimal.RequireFromString("5.123456").Equal(v.LatePayments[0].Amount))
	require.Len(t, v.Deposits, 1)
}

func TestStatusRules(t *testing.T) {
	store := newStore(t)
	h := handlers.New(store)
	ctx := context.Background()
	apply := func(body []byte) handlers.Outcome {
		out, err := h.Handle(ctx, delivery(t, body))
		require.NoError(t, err)
		return out
	}

	t.Run("final is terminal and a conflict is reported, not applied", func(t *testing.T) {
		out := apply(testutil.OrderEvent("a1", "O-a", "M1", "Expired", 100, "0"))
		require.Equal(t, domain.StatusExpired, out.Order.Status)
		out = apply(testutil.OrderEvent("a2", "O-a", "M1", "Completed", 200, "102"))
		require.False(t, out.FirstCompleted)
		require.Equal(t, domain.StatusCompleted, out.ConflictingFinal)
		require.Equal(t, domain.StatusExpired, out.Order.Status)
		require.Equal(t, handlers.Unchanged, apply(testutil.OrderEvent("a2", "O-a", "M1", "Completed", 200, "102")).Result)
	})
	t.Run("an older event never overwrites newer state", func(t *testing.T) {
		apply(testutil.OrderEvent("b1", "O-b", "M1", "Completed", 200, "102"))
		out := apply(testutil.OrderEvent("b0", "O-b", "M1", "Pending", 100, "0"))
		require.Equal(t, handlers.Unchanged, out.Result)
		require.Equal(t, domain.StatusCompleted, out.Order.Status)
		require.Equal(t, "102", out.Order.View().ReceivedTokenAmount.Decimal.String())
	})
	t.Run("late payments never change the status and count once", func(t *testing.T) {
		apply(testutil.OrderEvent("c1", "O-c", "M1", "Underpaid", 200, "50"))
		out := apply(testutil.TransactionEvent("c2", "late", "O-c", "tx-c", "3"))
		require.Len(t, out.LateRecorded, 1)
		require.Equal(t, domain.StatusUnderpaid, out.Order.Status)
		out = apply(testutil.TransactionEvent("c3", "late", "O-c", "tx-c", "3"))
		require.Equal(t, handlers.Unchanged, out.Result)
		require.Empty(t, out.LateRecorded)
	})
	t.Run("legacy event name is handled", func(t *testing.T) {
		body := strings.ReplaceAll(string(testutil.OrderEvent("d1", "O-d", "M1", "Completed", 200, "102")), "payment.order.status.updated", "payment.status.updated")
		out := apply([]byte(body))
		require.True(t, out.FirstCompleted)
	})
	t.Run("unknown types are ignored, top-up transactions have no order", func(t *testing.T) {
		require.Equal(t, handlers.Ignored, apply([]byte(`{"event_id":"u1","type":"payment.refund.status.updated","data":{"data_type":"PaymentRefund"}}`)).Result)
		require.Equal(t, handlers.NoOrder, apply(testutil.TransactionEvent("u2", "completed", "", "tx", "1")).Result)
	})
	t.Run("payloads that can never apply are invalid", func(t *testing.T) {
		for name, body := range map[string]string{
			"order without id":   `{"event_id":"i1","type":"payment.order.status.updated","data":{"status":"Completed"}}`,
			"amount not decimal": `{"event_id":"i2","type":"payment.order.status.updated","data":{"order_id":"O-i","status":"Completed","payable_amount":"ten"}}`,
			"late without order": string(testutil.TransactionEvent("i3", "late", "", "tx", "1")),
			"late zero amount":   string(testutil.TransactionEvent("i4", "late", "O-i", "tx", "0")),
		} {
			_, err := h.Handle(ctx, delivery(t, []byte(body)))
			require.ErrorIs(t, err, domain.ErrInvalid, name)
		}
	})
}

// TestConcurrentHandlersCommitEachTransitionOnce races many goroutines
// applying the same events to the same orders through the real bucket.
func TestConcurrentHandlersCommitEachTransitionOnce(t *testing.T) {
	store := newStore(t)
	ctx := context.Background()
	const orders, racers = 10, 6
	tl := newTally()
	var wg sync.WaitGroup
	for r := range racers {
		h := handlers.New(store)
		wg.Go(func() {
			for o := range orders {
				orderID := fmt.Sprintf("O-race-%d", o)
				evs := lifecycle(orderID)
				for i := range evs {
					body := evs[(i+r)%len(evs)]
					if !tl.handle(t, h, orderID, body) {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for o := range orders {
		orderID := fmt.Sprintf("O-race-%d", o)
		require.Equal(t, 1, tl.completed[orderID], orderID)
		require.Equal(t, 1, tl.late[orderID], orderID)
		got, _, err := store.Get(ctx, orderID)
		require.NoError(t, err)
		require.Equal(t, domain.StatusCompleted, got.Status)
	}
}

// tally counts, per order, the events of concurrent handlers that
// completed it and the late payments they recorded.
type tally struct {
	mu              sync.Mutex
	completed, late map[string]int
}

func newTally() *tally { return &tally{completed: map[string]int{}, late: map[string]int{}} }

// handle handles body with h and counts its outcome for orderID; false
// (the failure reported) when it failed. Safe from any goroutine.
func (tl *tally) handle(t *testing.T, h *handlers.Handler, orderID string, body []byte) bool {
	out, err := h.Handle(context.Background(), delivery(t, body))
	if err != nil {
		t.Errorf("handle: %v", err)
		return false
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if out.FirstCompleted {
		tl.completed[orderID]++
	}
	tl.late[orderID] += len(out.LateRecorded)
	return true
}

// fetcher answers as Cobo's order API would for the lifecycle orders.
type fetcher struct{}

func (fetcher) FetchOrder(_ context.Context, orderID string) (*handlers.ProviderOrder, error) {
	return providerOrder(testutil.OrderEvent("f", orderID, "M1001", "Completed", 200, "102.000001"))
}

// providerOrder is Cobo's order API answer with the order of a
// payment.order.status.updated body.
func providerOrder(body []byte) (*handlers.ProviderOrder, error) {
	var data cobo.OrderData
	env, err := cobo.ParseEnvelope(body)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(env.Data, &data); err != nil {
		return nil, err
	}
	return &handlers.ProviderOrder{Snapshot: handlers.SnapshotFromOrder(data)}, nil
}

// coboAPI is an order API that knows only the orders it is given, and
// counts the questions it was asked.
type coboAPI struct {
	mu     sync.Mutex
	orders map[string]*handlers.ProviderOrder
	asked  int
}

func (c *coboAPI) FetchOrder(_ context.Context, orderID string) (*handlers.ProviderOrder, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked++
	o, ok := c.orders[orderID]
	if !ok {
		return nil, fmt.Errorf("GET /payments/orders/%s: 404: %w", orderID, domain.ErrNotFound)
	}
	return o, nil
}

func TestEveryPermutationPlansTheSameAllocationsOnce(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	rules, err := allocation.ParseRules([]byte(`{"splits":[
		{"merchant_id":"M1001","destination_account":"developer","share":"0.10","description":"platform commission"},
		{"merchant_id":"*","destination_account":"M9000","share":"0.05","description":"referral"}],
		"late_payments":"credit_merchant"}`))
	require.NoError(t, err)
	h := handlers.New(store, handlers.WithPlanner(rules), handlers.WithFetcher(fetcher{}))
	ctx := context.Background()
	var want string
	for i, p := range permutations(len(lifecycle("x"))) {
		orderID := fmt.Sprintf("O-plan-%d", i)
		evs := lifecycle(orderID)
		planned := map[string]int{}
		for _, idx := range p {
			for range 2 {
				out, err := h.Handle(ctx, delivery(t, evs[idx]))
				require.NoError(t, err)
				for _, it := range out.Planned {
					planned[it.ID]++
				}
			}
		}
		require.Len(t, planned, 3, "permutation %v", p)
		for id, n := range planned {
			require.Equal(t, 1, n, "item %s planned %d times in permutation %v", id, n, p)
		}
		o, _, err := store.Get(ctx, orderID)
		require.NoError(t, err)
		b, err := json.Marshal(o.View().Allocations)
		require.NoError(t, err)
		got := strings.ReplaceAll(string(b), orderID, "X")
		if want == "" {
			want = got
		}
		require.JSONEq(t, want, got, "permutation %v", p)
	}
	require.Contains(t, want, `"amount":"10"`)
	require.Contains(t, want, `"amount":"5"`)
	require.Contains(t, want, `"amount":"5.123456"`)
	require.NotContains(t, want, `"failed"`)
}

func testRules(t *testing.T) *allocation.Rules {
	t.Helper()
	rules, err := allocation.ParseRules([]byte(`{"splits":[
		{"merchant_id":"*","destination_account":"developer","share":"0.10","description":"platform commission"}],
		"late_payments":"credit_merchant"}`))
	require.NoError(t, err)
	return rules
}

// requireNoOrder requires that nothing was stored for orderID.
func requireNoOrder(t *testing.T, store *events.OrderStore, orderID string) {
	t.Helper()
	_, _, err := store.Get(context.Background(), orderID)
	require.ErrorIs(t, err, domain.ErrNotFound, "order %s must not be stored", orderID)
}

func TestOrdersCoboDoesNotKnowChangeNothing(t *testing.T) {
	store := newStore(t)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()
	for _, body := range [][]byte{
		testutil.OrderEvent("e1", "O-foreign", "M1001", "Completed", 200, "102.000001"),
		testutil.OrderUpdatedEvent("e2", "O-foreign", "M1001", "Completed", 200, "102", "", ""),
		testutil.TransactionEvent("e3", "late", "O-foreign", "tx9", "5"),
	} {
		out, err := h.Handle(ctx, delivery(t, body))
		require.ErrorIs(t, err, domain.ErrUnknownOrder)
		require.ErrorIs(t, err, domain.ErrInvalid, "permanent: dead-lettered at once")
		require.Empty(t, out.Planned)
	}
	requireNoOrder(t, store, "O-foreign")
	require.Equal(t, 3, api.asked)
}

func TestCompletedWaitsUntilCoboConfirms(t *testing.T) {
	store := newStore(t)
	pending, err := providerOrder(testutil.OrderEvent("api", "O-lag", "M1001", "Processing", 150, "0"))
	require.NoError(t, err)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{"O-lag": pending}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()
	ev := delivery(t, testutil.OrderEvent("e1", "O-lag", "M1001", "Completed", 200, "102.000001"))

	_, err = h.Handle(ctx, ev)
	require.ErrorIs(t, err, domain.ErrUnconfirmed)
	require.NotErrorIs(t, err, domain.ErrInvalid, "transient: retried, since Cobo's API may lag its webhook")
	requireNoOrder(t, store, "O-lag")

	// Cobo's API catches up: the retried event plans from its answer.
	api.orders["O-lag"], err = providerOrder(testutil.OrderEvent("api", "O-lag", "M1001", "Completed", 200, "102.000001"))
	require.NoError(t, err)
	out, err := h.Handle(ctx, ev)
	require.NoError(t, err)
	require.True(t, out.FirstCompleted)
	require.Len(t, out.Planned, 1)
	require.Equal(t, "10", out.Planned[0].Amount.String())

	// Once planned, duplicates do not ask again.
	asked := api.asked
	_, err = h.Handle(ctx, ev)
	require.NoError(t, err)
	require.Equal(t, asked, api.asked)
}

func TestSplitsComeFromCobosAnswerNotTheWebhook(t *testing.T) {
	store := newStore(t)
	// Cobo's order: merchant M2002 received 51.000001 of 102.
	byCobo, err := providerOrder(testutil.OrderEvent("api", "O-diff", "M2002", "Completed", 200, "51.000001"))
	require.NoError(t, err)
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{"O-diff": byCobo}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	// The (signed) webhook claims merchant M1001 received 102.000001.
	out, err := h.Handle(context.Background(), delivery(t, testutil.OrderEvent("e1", "O-diff", "M1001", "Completed", 200, "102.000001")))
	require.NoError(t, err)
	require.Len(t, out.Planned, 1)
	it := out.Planned[0]
	require.Equal(t, "M2002", it.Source, "the merchant Cobo's API names")
	require.Equal(t, "5", it.Amount.String(), "10%% of what Cobo says was paid for the price (51 of 102 → 50 × 0.10)")
}

func TestLatePaymentIsCreditedOnlyAsCoboListsIt(t *testing.T) {
	store := newStore(t)
	po, err := providerOrder(testutil.OrderEvent("api", "O-late", "M1001", "Completed", 200, "102.000001"))
	require.NoError(t, err)
	po.Transactions = []handlers.ProviderTx{{ID: "tx-listed", Amount: decimal.NewNullDecimal(decimal.RequireFromString("5.5"))}}
	api := &coboAPI{orders: map[string]*handlers.ProviderOrder{"O-late": po}}
	h := handlers.New(store, handlers.WithPlanner(testRules(t)), handlers.WithFetcher(api))
	ctx := context.Background()

	_, err = h.Handle(ctx, delivery(t, testutil.TransactionEvent("e1", "late", "O-late", "tx-listed", "55")))
	require.ErrorIs(t, err, domain.ErrInvalid, "the event's amount disagrees with Cobo's")
	requireNoOrder(t, store, "O-late")

	// The order was never seen: Cobo's answer also completes it, so its
	// splits are planned with the credit.
	out, err := h.Handle(ctx, delivery(t, testutil.TransactionEvent("e2", "late", "O-late", "tx-listed", "5.5")))
	require.NoError(t, err)
	require.Len(t, out.Planned, 2)
	late := out.Planned[slices.IndexFunc(out.Planned, func(it domain.AllocationItem) bool { return it.Kind == domain.KindLate })]
	require.Equal(t, "5.5", late.Amount.String())
	require.Equal(t, "M1001", late.Destination)
}

func TestStateOnlyNeedsNoOrderAPI(t *testing.T) {
	store := newStore(t)
	h := handlers.New(store)
	out, err := h.Handle(context.Background(), delivery(t, testutil.OrderEvent("e1", "O-state", "M1001", "Completed", 200, "102.000001")))
	require.NoError(t, err)
	require.True(t, out.FirstCompleted)
}

// TestEventsLackingWhatTheirTypeNeedsAreInvalid: a signed event whose data
// lacks what its type requires is refused as invalid, naming the field,
// and creates no order.
func TestEventsLackingWhatTheirTypeNeedsAreInvalid(t *testing.T) {
	store := newStore(t)
	h := handlers.New(store)
	for _, c := range []struct {
		body  string
		field string
	}{
		{`{"event_id":"p1","type":"payment.order.status.updated","data":{"order_id":"X1"}}`, "data.status"},
		{`{"event_id":"p2","type":"payment.order.status.updated","data":{"order_id":"X1","status":"Paid"}}`, "data.status"},
		{`{"event_id":"p3","type":"payment.order.updated","data":{"order_id":"X1"}}`, "data.status"},
		{`{"event_id":"p4","type":"payment.transaction.completed","data":{"order_id":"X1","transaction_id":"t1"}}`, "data.destination.amount"},
		{`{"event_id":"p5","type":"payment.transaction.completed","data":{"order_id":"X1","destination":{"amount":"5"}}}`, "data.transaction_id"},
		{`{"event_id":"p6","type":"payment.transaction.late","data":{"order_id":"X1","transaction_id":"t1"}}`, "destination.amount"},
	} {
		_, err := h.Handle(context.Background(), delivery(t, []byte(c.body)))
		require.ErrorIs(t, err, domain.ErrInvalid, c.body)
		require.ErrorContains(t, err, c.field, c.body)
	}
	requireNoOrder(t, store, "X1")
}
