package clustertest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

// The timeout is generous: a 3-node cluster in one test process, under the
// rest of the suite's load, can take seconds to answer after an election.
var httpClient = &http.Client{Timeout: 20 * time.Second}

// logBook keeps the JSON log lines of the processes of one test, shows the
// tail when the test fails, and answers questions about them.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

func newLogBook(t *testing.T) *logBook {
	t.Helper()
	b := &logBook{}
	// Registered before any process starts, so it runs after they stopped.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		lines := b.all()
		for _, l := range lines[max(0, len(lines)-150):] {
			t.Log(strings.TrimSpace(l))
		}
	})
	return b
}

// Write implements io.Writer; zerolog writes one line per call.
func (b *logBook) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, string(p))
	return len(p), nil
}

func (b *logBook) all() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

func (b *logBook) logger(component string) zerolog.Logger {
	return zerolog.New(b).Level(zerolog.WarnLevel).With().Str("component", component).Logger()
}

// saveFailed reports whether handling eventID failed while writing the
// order: the one case where a commit can have landed without its worker
// learning it (the connection or the leader went away before the
// answer), so that no worker reports the outcome.
func (b *logBook) saveFailed(eventID string) bool {
	for _, l := range b.all() {
		var e struct {
			EventID string `json:"event_id"`
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.EventID == eventID &&
			e.Message == "event failed; will retry" && strings.Contains(e.Error, "save order") {
			return true
		}
	}
	return false
}

// startIngest runs the real ingest against the cluster as the ingest user.
func startIngest(t *testing.T, c *cluster, signer *testutil.Signer, logs *logBook) *ingest.Service {
	t.Helper()
	s, err := ingest.Start(context.Background(), ingestConfig(c, signer, logs))
	return keepIngest(t, s, err)
}

// ingestConfig is the configuration of the real ingest on the cluster as
// the ingest user.
func ingestConfig(c *cluster, signer *testutil.Signer, logs *logBook) ingest.Config {
	return ingest.Config{
		Listen:       "127.0.0.1:0",
		AdminListen:  "127.0.0.1:0",
		NATSURL:      c.url(),
		NATSOptions:  []nats.Option{ingestUser.opt()},
		CoboPubKeys:  []string{signer.PubHex},
		StoreTimeout: time.Second,
		Stream:       events.StreamConfig{Replicas: 3},
		Logger:       logs.logger("ingest"),
	}
}

// keepIngest requires that ingest started and shuts it down at the end of
// the test.
func keepIngest(t *testing.T, s *ingest.Service, err error) *ingest.Service {
	t.Helper()
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// observed counts, across the workers of a test, what each order saw and
// how much each worker did.
type observed struct {
	mu             sync.Mutex
	firstCompleted map[string]int
	lateRecorded   map[string]int
	perWorker      map[string]int
}

func newObserved() *observed {
	return &observed{firstCompleted: map[string]int{}, lateRecorded: map[string]int{}, perWorker: map[string]int{}}
}

// observer returns the worker.Config.Observer of the worker named name.
func (o *observed) observer(name string) func(context.Context, events.Event, handlers.Outcome) error {
	return func(_ context.Context, _ events.Event, out handlers.Outcome) error {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.perWorker[name]++
		if out.Order != nil {
			if out.FirstCompleted {
				o.firstCompleted[out.Order.OrderID]++
			}
			o.lateRecorded[out.Order.OrderID] += len(out.LateRecorded)
		}
		return nil
	}
}

func (o *observed) counts(orderID string) (firstCompleted, lateRecorded int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.firstCompleted[orderID], o.lateRecorded[orderID]
}

func (o *observed) workers() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]int{}
	for k, v := range o.perWorker {
		out[k] = v
	}
	return out
}

// startWorker runs the real worker against the cluster as the worker user.
func startWorker(t *testing.T, c *cluster, signer *testutil.Signer, name string, obs *observed, logs *logBook, alloc *worker.AllocationConfig) *testutil.RunningWorker {
	t.Helper()
	return testutil.RunWorker(t, workerConfig(t, c, signer, name, obs, logs, alloc))
}

// workerConfig is the configuration of a real worker on the cluster as
// the worker user.
func workerConfig(t *testing.T, c *cluster, signer *testutil.Signer, name string, obs *observed, logs *logBook, alloc *worker.AllocationConfig) worker.Config {
	return worker.Config{
		Verifier:      signer.Verifier(t),
		NATSURL:       c.url(),
		NATSOptions:   []nats.Option{workerUser.opt()},
		MetricsListen: "127.0.0.1:0",
		Stream:        events.StreamConfig{Replicas: 3},
		// A short AckWait bounds how long an event held by a dead node or
		// worker waits; MaxDeliver is generous because a leader election
		// may fail a few deliveries of one event in a row.
		Consumer:   events.ConsumerConfig{AckWait: 2 * time.Second, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Concurrency: 4, MaxDeliver: 20},
		StreamWait: 10 * time.Second,
		Logger:     logs.logger(name),
		Observer:   obs.observer(name),
		Allocation: alloc,
	}
}

// delivery is the outcome of sending one webhook as Cobo does: resent
// after every non-200 answer until a 200.
type delivery struct {
	status   string // accepted or duplicate
	attempts int
}

// deliver resends body until ingest answers 200, at most 60 times in 30s;
// only 503 (the event could not be stored) is an acceptable refusal.
func deliver(signer *testutil.Signer, s *ingest.Service, body []byte) (delivery, error) {
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; attempt <= 60; attempt++ {
		resp, err := httpClient.Do(mustRequest(signer, "http://"+s.PublicAddr()+ingest.WebhookPath, body))
		if err != nil {
			return delivery{}, fmt.Errorf("attempt %d: %w", attempt, err)
		}
		var out map[string]string
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil {
			return delivery{}, fmt.Errorf("attempt %d: decode: %w", attempt, err)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return delivery{status: out["status"], attempts: attempt}, nil
		case resp.StatusCode != http.StatusServiceUnavailable:
			return delivery{}, fmt.Errorf("attempt %d: status %d: %v", attempt, resp.StatusCode, out)
		case time.Now().After(deadline):
			return delivery{}, fmt.Errorf("still 503 after %d attempts: %v", attempt, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return delivery{}, fmt.Errorf("no 200 in 60 attempts")
}

// mustRequest is testutil.Signer.Request for goroutines, which must not
// call t.FailNow.
func mustRequest(signer *testutil.Signer, url string, body []byte) *http.Request {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	ts, sig := signer.Sign(body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(cobo.HeaderTimestamp, ts)
	req.Header.Set(cobo.HeaderSignature, sig)
	return req
}

// getOrder reads an order through ingest's admin API.
func getOrder(t *testing.T, s *ingest.Service, orderID string) (domain.OrderView, bool) {
	t.Helper()
	return testutil.GetOrder(t, s.AdminAddr(), orderID)
}

// storedOrder reads an order straight from the bucket as the test admin,
// with the fields the admin API does not show.
func storedOrder(t *testing.T, js jetstream.JetStream, orderID string) *domain.Order {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), events.OrdersBucket)
	require.NoError(t, err)
	o, _, err := events.NewOrderStore(kv).Get(context.Background(), orderID)
	require.NoError(t, err)
	return o
}

// history is one order's webhooks and the state they end in.
type history struct {
	orderID string
	events  [][]byte
	// final is the status the history ends in; completed histories also
	// record a deposit and a late payment.
	final domain.OrderStatus
}

// completedHistory is a realistic paid order: Pending, the deposit,
// Completed, a late payment and Cobo's two-decimal late-payment notice.
func completedHistory(orderID string) history {
	id := func(name string) string { return orderID + "-" + name }
	return history{orderID: orderID, final: domain.StatusCompleted, events: [][]byte{
		testutil.OrderEvent(id("pending"), orderID, "M1001", "Pending", 100, "0"),
		testutil.TransactionEvent(id("txc"), "completed", orderID, orderID+"-tx1", "102.000001"),
		testutil.OrderEvent(id("completed"), orderID, "M1001", "Completed", 200, "102.000001"),
		testutil.TransactionEvent(id("late"), "late", orderID, orderID+"-tx2", "5.123456"),
		testutil.OrderUpdatedEvent(id("notice"), orderID, "M1001", "Completed", 300, "102", orderID+"-tx2", "5.12"),
	}}
}

// expiredHistory is an order never paid.
func expiredHistory(orderID string) history {
	return history{orderID: orderID, final: domain.StatusExpired, events: [][]byte{
		testutil.OrderEvent(orderID+"-pending", orderID, "M1001", "Pending", 100, "0"),
		testutil.OrderEvent(orderID+"-expired", orderID, "M1001", "Expired", 400, "0"),
	}}
}

// histories returns n orders named prefix-NNN, every fourth one expired.
func histories(prefix string, n int) []history {
	var hs []history
	for i := range n {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		if i%4 == 3 {
			hs = append(hs, expiredHistory(id))
		} else {
			hs = append(hs, completedHistory(id))
		}
	}
	return hs
}

// reached reports whether v shows every event of h applied.
func (h history) reached(v domain.OrderView) bool {
	if h.final == domain.StatusExpired {
		return v.Status == domain.StatusExpired && v.UpdatedTimestamp == 400
	}
	return v.Status == domain.StatusCompleted && v.UpdatedTimestamp == 300 &&
		v.ReceivedTokenAmount.Decimal.String() == "102.000001" &&
		len(v.LatePayments) == 1 && v.LatePayments[0].Precise && len(v.Deposits) == 1
}

// requireFinal checks h's final state exactly: every event is reflected
// once (one deposit, one late payment at full precision).
func (h history) requireFinal(t *testing.T, s *ingest.Service) {
	t.Helper()
	v, ok := getOrder(t, s, h.orderID)
	require.True(t, ok, h.orderID)
	require.Equal(t, h.final, v.Status, h.orderID)
	if h.final == domain.StatusExpired {
		require.Empty(t, v.Deposits, h.orderID)
		require.Empty(t, v.LatePayments, h.orderID)
		return
	}
	require.Equal(t, "102.000001", v.ReceivedTokenAmount.Decimal.String(), h.orderID)
	require.Len(t, v.Deposits, 1, h.orderID)
	require.Len(t, v.LatePayments, 1, h.orderID)
	require.Equal(t, "5.123456", v.LatePayments[0].Amount.String(), h.orderID)
}

// requireReportedOnce checks what the workers reported for h: a completed
// order's first completion and its late payment exactly once each, an
// expired order's never. The one allowed exception is a completion whose
// commit landed while its worker lost the answer (logs.saveFailed): then
// nobody can report it, and the stored order still names the event that
// completed it.
func (h history) requireReportedOnce(t *testing.T, obs *observed, logs *logBook, admin jetstream.JetStream) {
	t.Helper()
	fc, late := obs.counts(h.orderID)
	if h.final != domain.StatusCompleted {
		require.Zero(t, fc, h.orderID)
		require.Zero(t, late, h.orderID)
		return
	}
	require.LessOrEqual(t, fc, 1, "%s: first completion reported twice", h.orderID)
	require.LessOrEqual(t, late, 1, "%s: late payment recorded twice", h.orderID)
	o := storedOrder(t, admin, h.orderID)
	require.NotEmpty(t, o.CompletedByEvent, h.orderID)
	if fc == 0 {
		require.True(t, logs.saveFailed(o.CompletedByEvent), "%s: completion by %s committed but never reported, and no save of it failed", h.orderID, o.CompletedByEvent)
		t.Logf("%s: completion by %s committed while its worker lost the answer, so nobody reported it", h.orderID, o.CompletedByEvent)
	}
	if late == 0 {
		require.True(t, logs.saveFailed(h.orderID+"-late") || logs.saveFailed(h.orderID+"-notice"),
			"%s: late payment committed but never reported, and no save of it failed", h.orderID)
	}
}

// streamMsgs returns how many messages a stream holds, as the test admin.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	return streamInfo(t, js, stream).State.Msgs
}
