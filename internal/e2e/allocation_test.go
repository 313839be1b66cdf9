package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

// allocStack is ingest plus a Cobo sandbox that workers allocate against.
type allocStack struct {
	signer *testutil.Signer
	ing    *ingest.Service
	sim    *cobosim.Sim
	simURL string
	api    *cobo.APISigner
	rules  *allocation.Rules
	// bitgo, when set, is the BitGo side workers also allocate against.
	bitgo *bitgoSide
	// orphanAfter, when set, is the workers' -orphan-after.
	orphanAfter time.Duration
	// reconcile is the workers' reconciliation settings (the default
	// interval, 10 min, never comes round in a test).
	reconcile reconcile.Config
	// stream is the workers' stream settings (their -retention).
	stream events.StreamConfig
}

func startAllocStack(t *testing.T, simCfg cobosim.Config) *allocStack {
	t.Helper()
	return startAllocStackWith(t, simCfg, ingest.Config{})
}

// startAllocStackWith is startAllocStack with ingest's settings.
func startAllocStackWith(t *testing.T, simCfg cobosim.Config, ingCfg ingest.Config) *allocStack {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	simCfg.APIKeys = []string{api.APIKey()}
	simCfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	sim := cobosim.New(simCfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	rules, err := allocation.ParseRules([]byte(testutil.Rules))
	require.NoError(t, err)
	signer := testutil.NewSigner(t)
	return &allocStack{signer: signer, ing: startIngest(t, signer, ingCfg), sim: sim, simURL: srv.URL, api: api, rules: rules}
}

// gate sits between a worker and the sandbox. It can hold batch POSTs
// before they reach the sandbox, or after the sandbox answered, the way a
// process that is about to die would.
type gate struct {
	mode string // "", "before" or "after"
	hit  chan struct{}
	once sync.Once
	// suffix selects the POSTs held; Cobo's batch route when empty.
	suffix string
}

func (g *gate) RoundTrip(req *http.Request) (*http.Response, error) {
	suffix := g.suffix
	if suffix == "" {
		suffix = "/payments/batch_allocations"
	}
	isPost := req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, suffix)
	if !isPost || g.mode == "" {
		return http.DefaultTransport.RoundTrip(req)
	}
	if g.mode == "after" {
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
	}
	g.once.Do(func() { close(g.hit) })
	<-req.Context().Done()
	return nil, req.Context().Err()
}

func (s *allocStack) startWorker(t *testing.T, g *gate) *testutil.RunningWorker {
	t.Helper()
	var transport http.RoundTripper = http.DefaultTransport
	if g != nil {
		transport = g
	}
	alloc := &worker.AllocationConfig{
		Rules: s.rules,
		Cobo: cobo.ClientConfig{
			BaseURL: s.simURL + "/v2", Signer: s.api,
			Config: httpretry.Config{HTTP: &http.Client{Transport: transport},
				MaxAttempts: 4, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond},
		},
		Batcher: allocation.BatcherConfig{BatchWait: 50 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond, SendTimeout: 5 * time.Second,
			RetryMax: time.Second, SettleAfter: time.Second},
		IntentAckWait: 3 * time.Second,
		Sweeper:       allocation.SweeperConfig{OrphanAfter: s.orphanAfter},
		Reconcile:     s.reconcile,
	}
	if s.bitgo != nil {
		alloc.BitGo = s.bitgo.clientConfig(transport)
		alloc.BitGoSender = allocation.BitGoSenderConfig{Poll: 50 * time.Millisecond, Retry: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, SendTimeout: 5 * time.Second}
	}
	return testutil.RunWorker(t, worker.Config{
		NATSURL:       s.ing.NATSURL(),
		NATSOptions:   s.ing.Credentials().Login(natsembed.UserWorker),
		Verifier:      s.signer.Verifier(t),
		MetricsListen: "127.0.0.1:0",
		Consumer:      testConsumerConfig(),
		StreamWait:    10 * time.Second,
		Logger:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Allocation:    alloc,
		Stream:        s.stream,
	})
}

// expectedItems is what orderEvents histories allocate under testutil.Rules:
// 10% commission, 5% referral and the late payment, per order.
func expectedItems(orderIDs ...string) map[string]string {
	want := map[string]string{}
	for _, id := range orderIDs {
		want["platform commission "+id] = "10"
		want["referral "+id] = "5"
		want[fmt.Sprintf("late payment %s-tx2 for order %s", id, id)] = "5.123456"
	}
	return want
}

// requireAllocatedOnce waits until every order records its allocations as
// completed, then checks the sandbox holds each expected item exactly once.
func (s *allocStack) requireAllocatedOnce(t *testing.T, orderIDs ...string) {
	t.Helper()
	for _, id := range orderIDs {
		testutil.WaitFor(t, 30*time.Second, "allocations of "+id, func() bool {
			v, ok := getOrder(t, s.ing, id)
			if !ok || len(v.Allocations) != 3 {
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
	want := expectedItems(orderIDs...)
	got := map[string]int{}
	for _, it := range s.sim.Items() {
		got[it.Description]++
		amount, ok := want[it.Description]
		require.True(t, ok, "unexpected item %+v", it)
		require.True(t, decimal.RequireFromString(amount).Equal(decimal.RequireFromString(it.Amount)), "%s: got %s want %s", it.Description, it.Amount, amount)
	}
	for desc := range want {
		require.Equal(t, 1, got[desc], "item %q must exist exactly once at the provider", desc)
	}
}

// registerOrders tells the sandbox the orders, as Cobo knows every order
// it sends events for; the worker fetches them when it must.
func (s *allocStack) registerOrders(orderIDs ...string) {
	for _, id := range orderIDs {
		s.sim.PutOrder(cobo.OrderData{OrderID: id, MerchantID: "M1001", PSPOrderCode: "P-" + id, Status: "Completed",
			PricingCurrency: "USD", PricingAmount: amount("100.00"), FeeAmount: amount("2.00"), PayableCurrency: "ETH_USDT",
			PayableAmount: amount("102.00"), ReceivedTokenAmount: amount("102.000001"), UpdatedTimestamp: 200})
	}
}

func sendHistories(t *testing.T, s *allocStack, orderIDs ...string) {
	t.Helper()
	s.registerOrders(orderIDs...)
	var all [][]byte
	for _, id := range orderIDs {
		all = append(all, orderEvents(id)...)
	}
	sendConcurrently(t, s.signer, s.ing, all, 4)
}

func TestAllocationsHappyPath(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.startWorker(t, nil)
	ids := []string{"O-alloc-1", "O-alloc-2", "O-alloc-3"}
	sendHistories(t, s, ids...)
	s.requireAllocatedOnce(t, ids...)
	v, _ := getOrder(t, s.ing, "O-alloc-1")
	for _, a := range v.Allocations {
		require.NotEmpty(t, a.RequestID)
		require.NotEmpty(t, a.ProviderID)
	}
}

func TestAllocationSurvivesWorkerKilledBeforeSend(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	g := &gate{mode: "before", hit: make(chan struct{})}
	victim := s.startWorker(t, g)
	sendHistories(t, s, "O-kb")
	<-g.hit
	victim.Kill()
	require.Empty(t, s.sim.Batches(), "nothing reached the provider yet")
	s.startWorker(t, nil)
	s.requireAllocatedOnce(t, "O-kb")
}

func TestAllocationSurvivesWorkerKilledAfterResponseBeforeRecording(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	g := &gate{mode: "after", hit: make(chan struct{})}
	victim := s.startWorker(t, g)
	sendHistories(t, s, "O-ka")
	<-g.hit
	victim.Kill()
	require.NotEmpty(t, s.sim.Batches(), "the provider recorded the batch")
	s.startWorker(t, nil)
	s.requireAllocatedOnce(t, "O-ka")
}

func TestAllocationSurvivesProviderFaults(t *testing.T) {
	cases := []struct {
		name  string
		code  int
		fault cobosim.Fault
	}{
		{"500 before recording", 0, cobosim.Fault{Kind: cobosim.FaultError500, Count: 3}},
		{"recorded, 502 lost response, duplicate 12009", 12009, cobosim.Fault{Kind: cobosim.FaultLoseResponse, Count: 2}},
		{"recorded, 502 lost response, duplicate 2040", 2040, cobosim.Fault{Kind: cobosim.FaultLoseResponse, Count: 1}},
		{"recorded, 502 lost response, duplicate 30001", 30001, cobosim.Fault{Kind: cobosim.FaultLoseResponse, Count: 1}},
		{"recorded, response timed out", 0, cobosim.Fault{Kind: cobosim.FaultTimeout, Count: 1, Delay: 2 * time.Second}},
		{"rate limited", 0, cobosim.Fault{Kind: cobosim.FaultRateLimit, Count: 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startAllocStack(t, cobosim.Config{DuplicateCode: tc.code})
			tc.fault.Method, tc.fault.PathPrefix = http.MethodPost, "/v2/payments/batch_allocations"
			s.sim.InjectFault(tc.fault)
			s.startWorker(t, nil)
			sendHistories(t, s, "O-fault")
			s.requireAllocatedOnce(t, "O-fault")
		})
	}
}

// TestCompletedFiveTimesAndRacingWorkers has Cobo report an order's
// completion five times (distinct event_ids) to two workers at once.
func TestCompletedFiveTimesAndRacingWorkers(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.startWorker(t, nil)
	s.startWorker(t, nil)
	var all [][]byte
	ids := []string{"O-5x-1", "O-5x-2", "O-5x-3", "O-5x-4"}
	s.registerOrders(ids...)
	for _, id := range ids {
		for round := range 5 {
			all = append(all, orderEventsWithSuffix(id, fmt.Sprintf("-x%d", round))...)
		}
	}
	sendConcurrently(t, s.signer, s.ing, all, 8)
	s.requireAllocatedOnce(t, ids...)
}

// TestLatePaymentOfUnknownOrderFetchesIt sends only the late payment of an
// order paystream never saw: the worker fetches the order from Cobo to
// learn its merchant.
func TestLatePaymentOfUnknownOrderFetchesIt(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.sim.PutOrder(cobo.OrderData{OrderID: "O-unknown", MerchantID: "M1001", Status: "Expired", PayableCurrency: "ETH_USDT",
		PayableAmount: amount("102"), ReceivedTokenAmount: amount("0"), FeeAmount: amount("2"), UpdatedTimestamp: 500})
	s.startWorker(t, nil)
	postUntilStored(t, s.signer, s.ing, testutil.TransactionEvent("late-only", "late", "O-unknown", "tx-u", "7.25"))
	testutil.WaitFor(t, 20*time.Second, "late allocation", func() bool {
		v, ok := getOrder(t, s.ing, "O-unknown")
		return ok && len(v.Allocations) == 1 && v.Allocations[0].Status == domain.AllocCompleted
	})
	v, _ := getOrder(t, s.ing, "O-unknown")
	require.Equal(t, domain.StatusExpired, v.Status)
	require.Equal(t, "M1001", v.Allocations[0].Destination)
	items := s.sim.Items()
	require.Len(t, items, 1)
	require.Equal(t, "developer", items[0].SourceAccount)
	require.Equal(t, "M1001", items[0].DestinationAccount)
	require.Equal(t, "7.25", items[0].Amount)
}

// TestFailedItemsAreSurfacedNotRetried has Cobo fail one destination's
// items: they are recorded failed for an operator and never re-sent.
func TestFailedItemsAreSurfacedNotRetried(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.sim.SetItemFailure("M9000")
	w := s.startWorker(t, nil)
	sendHistories(t, s, "O-fail")
	waitItemsFinal(t, s.ing, "O-fail", 3, 20*time.Second)
	v, _ := getOrder(t, s.ing, "O-fail")
	for _, a := range v.Allocations {
		if a.Destination == "M9000" {
			require.Equal(t, domain.AllocFailed, a.Status)
			require.NotEmpty(t, a.Reason)
		} else {
			require.Equal(t, domain.AllocCompleted, a.Status)
		}
	}
	batches := len(s.sim.Batches())
	// Give recovery several rounds to (wrongly) resend anything.
	time.Sleep(time.Second)
	require.Len(t, s.sim.Batches(), batches)
	code, body := getJSON(t, "http://"+w.W.MetricsAddr()+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), `paystream_allocation_items_total{backend="cobo",status="failed"} 1`)
	// Lag is polled from consumer info at start and every LagInterval.
	require.Contains(t, string(body), `paystream_consumer_pending{consumer="paystream-worker"}`)
	require.Contains(t, string(body), `paystream_consumer_ack_pending{consumer="paystream-batcher"}`)
}

func amount(s string) cobo.Amount {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		panic(err)
	}
	return a
}

// TestOrphanedPlannedItemsAreSwept kills the outbox path: the intent
// stream is gone while an order completes, so every outbox publish fails
// and the events are dead-lettered with their items planned on the order
// and no intent anywhere. Two workers started later (which recreate the
// stream) find them through the outbox marks, sweep them concurrently, and
// each item is sent once.
func TestOrphanedPlannedItemsAreSwept(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.orphanAfter = time.Second
	first := s.startWorker(t, nil)
	admin, err := nats.Connect(s.ing.NATSURL(), s.ing.Credentials().Login(natsembed.UserAdmin)...)
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	ajs, err := jetstream.New(admin)
	require.NoError(t, err)
	require.NoError(t, ajs.DeleteStream(context.Background(), allocation.IntentStream))

	sendHistories(t, s, "O-orphan")
	testutil.WaitFor(t, 30*time.Second, "the completing events dead-lettered", func() bool {
		n := 0
		for _, dl := range deadLetters(t, s.ing) {
			if dl.OrderID == "O-orphan" && strings.Contains(dl.Reason, "publish allocation item") {
				n++
			}
		}
		return n >= 2 // the Completed event and the late payment
	})
	v, ok := getOrder(t, s.ing, "O-orphan")
	require.True(t, ok)
	require.Len(t, v.Allocations, 3)
	for _, a := range v.Allocations {
		require.Equal(t, domain.AllocPlanned, a.Status, "planned, and no intent exists")
	}
	first.Stop(t)
	require.Empty(t, s.sim.Items())

	ws := []*testutil.RunningWorker{s.startWorker(t, nil), s.startWorker(t, nil)}
	s.requireAllocatedOnce(t, "O-orphan")
	swept := 0
	for _, w := range ws {
		swept += int(metricValue(t, w, `paystream_allocation_orphans_republished_total{backend="cobo"}`))
	}
	require.GreaterOrEqual(t, swept, 3, "each orphan was published again")
}
