package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

var httpClient = &http.Client{Timeout: 5 * time.Second}

// startIngest starts the real ingest service on loopback ports. With an
// empty cfg.NATSURL it runs its own embedded JetStream in cfg.DataDir (a
// temp dir when empty).
func startIngest(t *testing.T, signer *testutil.Signer, cfg ingest.Config) *ingest.Service {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	if cfg.NATSListen == "" {
		cfg.NATSListen = "127.0.0.1:0"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.CoboPubKeys = []string{signer.PubHex}
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	s, err := ingest.Start(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// observed counts, across all workers of a test, what each order saw.
type observed struct {
	mu             sync.Mutex
	firstCompleted map[string]int
	lateRecorded   map[string]int
}

func newObserved() *observed {
	return &observed{firstCompleted: map[string]int{}, lateRecorded: map[string]int{}}
}

func (o *observed) observe(_ context.Context, _ events.Event, out handlers.Outcome) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if out.Order != nil {
		if out.FirstCompleted {
			o.firstCompleted[out.Order.OrderID]++
		}
		o.lateRecorded[out.Order.OrderID] += len(out.LateRecorded)
	}
	return nil
}

func (o *observed) counts(orderID string) (int, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.firstCompleted[orderID], o.lateRecorded[orderID]
}

func testConsumerConfig() events.ConsumerConfig {
	return events.ConsumerConfig{AckWait: 2 * time.Second, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Concurrency: 4}
}

// natsLogin is where a test's process reaches NATS and how it logs in.
type natsLogin struct {
	url  string
	opts []nats.Option
}

// asWorker logs in to s's embedded server as the worker user, with the
// password ingest wrote for it.
func asWorker(s *ingest.Service) natsLogin {
	return natsLogin{url: s.NATSURL(), opts: s.Credentials().Login(natsembed.UserWorker)}
}

// startWorker starts a real worker logged in with login and trusting the
// signer's key, stopped when the test ends.
func startWorker(t *testing.T, login natsLogin, signer *testutil.Signer, observer func(context.Context, events.Event, handlers.Outcome) error) *testutil.RunningWorker {
	t.Helper()
	return testutil.RunWorker(t, worker.Config{
		NATSURL:       login.url,
		NATSOptions:   login.opts,
		Verifier:      signer.Verifier(t),
		MetricsListen: "127.0.0.1:0",
		Consumer:      testConsumerConfig(),
		StreamWait:    10 * time.Second,
		Logger:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Observer:      observer,
	})
}

// post sends a signed webhook and returns the status and decoded body.
func post(t *testing.T, signer *testutil.Signer, s *ingest.Service, body []byte) (int, map[string]string) {
	t.Helper()
	resp, err := httpClient.Do(signer.Request(t, "http://"+s.PublicAddr()+ingest.WebhookPath, body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]string
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

// postUntilStored retries like Cobo does until ingest answers 200.
func postUntilStored(t *testing.T, signer *testutil.Signer, s *ingest.Service, body []byte) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		code, out := post(t, signer, s, body)
		if code == http.StatusOK {
			return out["status"]
		}
		require.Equal(t, http.StatusServiceUnavailable, code, "unexpected answer %v", out)
		require.True(t, time.Now().Before(deadline), "still %d after %d attempts", code, attempt)
		time.Sleep(100 * time.Millisecond)
	}
}

func getJSON(t *testing.T, url string, header http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// getOrder reads an order through ingest's admin API.
func getOrder(t *testing.T, s *ingest.Service, orderID string) (domain.OrderView, bool) {
	t.Helper()
	return testutil.GetOrder(t, s.AdminAddr(), orderID)
}

// orderEvents is one order's realistic webhook history.
func orderEvents(orderID string) [][]byte { return orderEventsWithSuffix(orderID, "") }

// orderEventsWithSuffix is orderEvents with suffix appended to each event_id.
func orderEventsWithSuffix(orderID, suffix string) [][]byte {
	id := func(name string) string { return orderID + "-" + name + suffix }
	return [][]byte{
		testutil.OrderEvent(id("pending"), orderID, "M1001", "Pending", 100, "0"),
		testutil.TransactionEvent(id("txc"), "completed", orderID, orderID+"-tx1", "102.000001"),
		testutil.OrderEvent(id("completed"), orderID, "M1001", "Completed", 200, "102.000001"),
		testutil.TransactionEvent(id("late"), "late", orderID, orderID+"-tx2", "5.123456"),
		testutil.OrderUpdatedEvent(id("notice"), orderID, "M1001", "Completed", 300, "102", orderID+"-tx2", "5.12"),
	}
}

// requireFinalOrder checks the state every orderEvents history ends in.
func requireFinalOrder(t *testing.T, s *ingest.Service, orderID string) {
	t.Helper()
	v, ok := getOrder(t, s, orderID)
	require.True(t, ok, orderID)
	require.Equal(t, domain.StatusCompleted, v.Status, orderID)
	require.Equal(t, "102.000001", v.ReceivedTokenAmount.Decimal.String(), orderID)
	require.Len(t, v.LatePayments, 1, orderID)
	require.Equal(t, "5.123456", v.LatePayments[0].Amount.String(), orderID)
	require.Len(t, v.Deposits, 1, orderID)
}

func orderComplete(t *testing.T, s *ingest.Service, orderID string) bool {
	v, ok := getOrder(t, s, orderID)
	// Every event of the history must have left its mark: the notice
	// (timestamp 300), the precise Completed snapshot, the late payment at
	// full precision and the deposit.
	return ok && v.Status == domain.StatusCompleted && v.UpdatedTimestamp == 300 &&
		v.ReceivedTokenAmount.Decimal.String() == "102.000001" &&
		len(v.LatePayments) == 1 && v.LatePayments[0].Precise && len(v.Deposits) == 1
}

// streamMsgs returns how many events the event stream holds.
func streamMsgs(t *testing.T, login natsLogin) uint64 {
	t.Helper()
	nc, err := nats.Connect(login.url, login.opts...)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(context.Background(), events.StreamName)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func orderID(prefix string, i int) string { return fmt.Sprintf("%s-%03d", prefix, i) }

// metricValue reads one sample of w's /metrics, 0 when absent.
func metricValue(t *testing.T, w *testutil.RunningWorker, series string) float64 {
	t.Helper()
	code, body := getJSON(t, "http://"+w.W.MetricsAddr()+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	return 0
}

// waitItemsFinal waits until the order has n allocation items, all final
// (completed or failed).
func waitItemsFinal(t *testing.T, s *ingest.Service, orderID string, n int, timeout time.Duration) {
	t.Helper()
	testutil.WaitFor(t, timeout, "the allocation items of "+orderID+" final", func() bool {
		v, ok := getOrder(t, s, orderID)
		return ok && len(v.Allocations) == n && !slices.ContainsFunc(v.Allocations, func(a domain.AllocationItem) bool { return !a.Final() })
	})
}
