package replay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

var httpClient = &http.Client{Timeout: 5 * time.Second}

// stack is a real embedded JetStream server with the real ingest in front
// of it; workers are started on demand.
type stack struct {
	url    string
	js     jetstream.JetStream
	signer *testutil.Signer
	ing    *ingest.Service
	// alloc is set by withAllocations.
	alloc *allocSide
}

// allocSide is a Cobo sandbox that workers with rules allocate against.
type allocSide struct {
	sim   *cobosim.Sim
	url   string
	api   *cobo.APISigner
	rules *allocation.Rules
}

func newStack(t *testing.T) *stack {
	t.Helper()
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	s := &stack{url: srv.ClientURL(), signer: testutil.NewSigner(t)}
	ing, err := ingest.Start(context.Background(), ingest.Config{
		Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSURL: s.url,
		CoboPubKeys: []string{s.signer.PubHex},
		Logger:      zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ing.Shutdown(ctx)
	})
	s.ing = ing
	nc, err := nats.Connect(s.url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	s.js, err = jetstream.New(nc)
	require.NoError(t, err)
	return s
}

// withAllocations adds a Cobo sandbox for workers and replays with rules.
func (s *stack) withAllocations(t *testing.T) *stack {
	t.Helper()
	api := newAPISigner(t)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{api.APIKey()}, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	rules, err := allocation.ParseRules([]byte(testutil.Rules))
	require.NoError(t, err)
	s.alloc = &allocSide{sim: sim, url: srv.URL, api: api, rules: rules}
	return s
}

// newAPISigner returns a Cobo API signer with a fresh key.
func newAPISigner(t *testing.T) *cobo.APISigner {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	return api
}

// allocationConfig is what the workers allocate with, and what replay
// -apply must be given.
func (s *stack) allocationConfig() *worker.AllocationConfig {
	return &worker.AllocationConfig{
		Rules: s.alloc.rules,
		Cobo: cobo.ClientConfig{BaseURL: s.alloc.url + "/v2", Signer: s.alloc.api,
			Config: httpretry.Config{MaxAttempts: 3, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 2 * time.Second}},
		Batcher:       allocation.BatcherConfig{BatchWait: 50 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond, SendTimeout: 5 * time.Second},
		IntentAckWait: 3 * time.Second,
	}
}

// registerOrder tells the sandbox an order, as Cobo knows every order it
// sends events for.
func (s *stack) registerOrder(orderID string) {
	s.alloc.sim.PutOrder(cobo.OrderData{OrderID: orderID, MerchantID: "M1001", PSPOrderCode: "P-" + orderID, Status: "Completed",
		PricingCurrency: "USD", PricingAmount: amount("100.00"), FeeAmount: amount("2.00"), PayableCurrency: "ETH_USDT",
		PayableAmount: amount("102.00"), ReceivedTokenAmount: amount("102.000001"), UpdatedTimestamp: 200})
}

func amount(s string) cobo.Amount {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		panic(err)
	}
	return a
}

// startWorker starts a real worker, with the stack's rules when it has
// them, stopped when the test ends or when the returned func is called.
// One event at a time keeps the order of effects that of the stream, so a
// replay can be compared with it.
func (s *stack) startWorker(t *testing.T) (stop func()) {
	t.Helper()
	cfg := worker.Config{
		NATSURL:       s.url,
		Verifier:      s.signer.Verifier(t),
		MetricsListen: "-",
		Consumer:      events.ConsumerConfig{AckWait: 2 * time.Second, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Concurrency: 1},
		StreamWait:    10 * time.Second,
		Logger:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if s.alloc != nil {
		cfg.Allocation = s.allocationConfig()
	}
	w := testutil.RunWorker(t, cfg)
	return func() { w.Stop(t) }
}

// post sends a signed webhook through ingest, retrying like Cobo until it
// is stored.
func (s *stack) post(t *testing.T, body []byte) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		resp, err := httpClient.Do(s.signer.Request(t, "http://"+s.ing.PublicAddr()+ingest.WebhookPath, body))
		require.NoError(t, err)
		var out map[string]string
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			require.Equal(t, "accepted", out["status"], string(body))
			return
		}
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "unexpected answer %v", out)
		require.Less(t, attempt, 50, "not stored after %d attempts", attempt)
		time.Sleep(100 * time.Millisecond)
	}
}

// history is one order's realistic webhook history.
func history(orderID string) [][]byte {
	id := func(name string) string { return orderID + "-" + name }
	return [][]byte{
		testutil.OrderEvent(id("pending"), orderID, "M1001", "Pending", 100, "0"),
		testutil.TransactionEvent(id("txc"), "completed", orderID, orderID+"-tx1", "102.000001"),
		testutil.OrderEvent(id("completed"), orderID, "M1001", "Completed", 200, "102.000001"),
		testutil.TransactionEvent(id("late"), "late", orderID, orderID+"-tx2", "5.123456"),
		testutil.OrderUpdatedEvent(id("notice"), orderID, "M1001", "Completed", 300, "102", orderID+"-tx2", "5.12"),
	}
}

func (s *stack) postHistory(t *testing.T, orderID string) [][]byte {
	t.Helper()
	h := history(orderID)
	for _, b := range h {
		s.post(t, b)
	}
	return h
}

func (s *stack) streamInfo(t *testing.T, name string) *jetstream.StreamInfo {
	t.Helper()
	st, err := s.js.Stream(context.Background(), name)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	return info
}

func (s *stack) workerConsumer(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	return testutil.WorkerConsumerInfo(t, s.js)
}

// waitWorkersIdle waits until the durable consumer has delivered and had
// acknowledged everything the event stream holds.
func (s *stack) waitWorkersIdle(t *testing.T) {
	t.Helper()
	last := s.streamInfo(t, events.StreamName).State.LastSeq
	testutil.WaitFor(t, 20*time.Second, "workers to process every event", func() bool {
		info := s.workerConsumer(t)
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= last
	})
}

func (s *stack) orders(t *testing.T) *events.OrderStore {
	t.Helper()
	kv, err := s.js.KeyValue(context.Background(), events.OrdersBucket)
	require.NoError(t, err)
	return events.NewOrderStore(kv)
}

func (s *stack) order(t *testing.T, orderID string) (*domain.Order, uint64, bool) {
	t.Helper()
	o, rev, err := s.orders(t).Get(context.Background(), orderID)
	if err != nil {
		require.ErrorIs(t, err, domain.ErrNotFound)
		return nil, 0, false
	}
	return o, rev, true
}

// orderComplete reports whether every event of history left its mark.
func (s *stack) orderComplete(t *testing.T, orderID string) bool {
	o, _, ok := s.order(t, orderID)
	if !ok {
		return false
	}
	v := o.View()
	return v.Status == domain.StatusCompleted && v.UpdatedTimestamp == 300 && v.ReceivedTokenAmount.Decimal.String() == "102.000001" &&
		len(v.LatePayments) == 1 && v.LatePayments[0].Precise && len(v.Deposits) == 1
}

// line is one decoded output line, its fields kept raw.
type line struct {
	raw    []byte
	fields map[string]json.RawMessage
}

func (l line) str(t *testing.T, key string) string {
	t.Helper()
	var s string
	if raw, ok := l.fields[key]; ok {
		require.NoError(t, json.Unmarshal(raw, &s), key)
	}
	return s
}

func (l line) uint(t *testing.T, key string) uint64 {
	t.Helper()
	var n uint64
	require.NoError(t, json.Unmarshal(l.fields[key], &n), key)
	return n
}

func (l line) obj(t *testing.T, key string) map[string]any {
	t.Helper()
	raw, ok := l.fields[key]
	require.True(t, ok, "line has no %q: %s", key, l.raw)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

// parseLines splits output into JSON lines; every line must be one JSON
// object.
func parseLines(t *testing.T, out []byte) []line {
	t.Helper()
	var lines []line
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		raw := append([]byte(nil), sc.Bytes()...)
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &fields), string(raw))
		lines = append(lines, line{raw: raw, fields: fields})
	}
	require.NoError(t, sc.Err())
	return lines
}

// runReplay runs Replay into a buffer and returns its lines.
func (s *stack) runReplay(t *testing.T, cfg replay.Config) ([]line, replay.Summary, error) {
	t.Helper()
	var out bytes.Buffer
	cfg.JetStream, cfg.Out = s.js, &out
	if cfg.Apply && cfg.Verifier == nil {
		cfg.Verifier = s.signer.Verifier(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sum, err := replay.Replay(ctx, cfg)
	return parseLines(t, out.Bytes()), sum, err
}

func (s *stack) listDLQ(t *testing.T, sel replay.Selection) []line {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := replay.ListDeadLetters(ctx, replay.DLQConfig{JetStream: s.js, Select: sel, Out: &out})
	require.NoError(t, err)
	lines := parseLines(t, out.Bytes())
	require.Len(t, lines, n)
	return lines
}

func (s *stack) redrive(t *testing.T, cfg replay.DLQConfig) ([]line, error) {
	t.Helper()
	var out bytes.Buffer
	cfg.JetStream, cfg.Out = s.js, &out
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := replay.Redrive(ctx, cfg)
	return parseLines(t, out.Bytes()), err
}

// events returns the "event" objects of lines, raw.
func eventsOf(lines []line) [][]byte {
	var out [][]byte
	for _, l := range lines {
		out = append(out, l.fields["event"])
	}
	return out
}
