package console_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/console"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

// stack is a real ingest with its embedded JetStream, a real worker
// allocating against the Cobo sandbox, and the console logged in as the
// operator user, with the permissions of deploy/nats/accounts.conf.
type stack struct {
	signer *testutil.Signer
	ing    *ingest.Service
	sim    *cobosim.Sim
	alloc  *worker.AllocationConfig
	con    *console.Console
	token  string
	logs   *logBook
}

// logBook collects the console's and NATS clients' log lines, so that a
// test can require that no permission was refused.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBook) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, string(p))
	return len(p), nil
}

// requireNoViolation fails when a NATS client logged a refused permission.
func (b *logBook) requireNoViolation(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.lines {
		require.NotContains(t, strings.ToLower(l), "permissions violation", "the operator user lacks a permission the console uses")
	}
}

func startStack(t *testing.T) *stack {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	quiet := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{api.APIKey()}, Logger: quiet})
	sim.SetItemFailure("M9000")
	sim.SetItemStatus("developer", cobo.ItemPending)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	rules, err := allocation.ParseRules([]byte(testutil.Rules))
	require.NoError(t, err)

	s := &stack{signer: testutil.NewSigner(t), sim: sim, token: "console-test-token", logs: &logBook{}}
	ing, err := ingest.Start(context.Background(), ingest.Config{
		Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0", DataDir: t.TempDir(),
		CoboPubKeys: []string{s.signer.PubHex}, AdminToken: s.token, Logger: quiet,
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ing.Shutdown(ctx)
	})
	s.ing = ing
	s.alloc = &worker.AllocationConfig{
		Rules: rules,
		Cobo: cobo.ClientConfig{BaseURL: srv.URL + "/v2", Signer: api,
			Config: httpretry.Config{MaxAttempts: 4, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond}},
		Batcher: allocation.BatcherConfig{BatchWait: 50 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond,
			SendTimeout: 5 * time.Second, RetryMax: 200 * time.Millisecond, StuckAfter: 500 * time.Millisecond},
		IntentAckWait: 3 * time.Second,
	}
	testutil.RunWorker(t, worker.Config{
		NATSURL:       ing.NATSURL(),
		NATSOptions:   ing.Credentials().Login(natsembed.UserWorker),
		Verifier:      s.signer.Verifier(t),
		MetricsListen: "127.0.0.1:0",
		Consumer:      events.ConsumerConfig{AckWait: 2 * time.Second, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Concurrency: 4},
		StreamWait:    10 * time.Second,
		Logger:        quiet,
		Allocation:    s.alloc,
	})
	// Warnings and up: what a refused permission would log.
	log := zerolog.New(io.MultiWriter(s.logs, zerolog.NewTestWriter(t))).Level(zerolog.WarnLevel)
	con, err := console.Start(context.Background(), console.Config{
		NATSURL:        ing.NATSURL(),
		NATSOptions:    append(ing.Credentials().Login(natsembed.UserOperator), nats.ErrorHandler(natsErrors(s.logs))),
		Listen:         "127.0.0.1:0",
		Token:          s.token,
		Verifier:       s.signer.Verifier(t),
		Allocation:     s.alloc.Plan(),
		IngestAdminURL: "http://" + ing.AdminAddr(),
		SampleEvery:    200 * time.Millisecond,
		RefreshEvery:   time.Second,
		Logger:         log,
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, con.Shutdown(ctx))
		s.logs.requireNoViolation(t)
	})
	s.con = con
	return s
}

// natsErrors records the NATS client's asynchronous errors, where a
// refused publish or subscription shows.
func natsErrors(b *logBook) nats.ErrHandler {
	return func(_ *nats.Conn, _ *nats.Subscription, err error) {
		_, _ = b.Write([]byte("nats async error: " + err.Error() + "\n"))
	}
}

// register tells the Cobo sandbox an order, as Cobo knows every order it
// sends events for.
func (s *stack) register(orderID, merchant string) {
	s.sim.PutOrder(testutil.CoboOrder(orderID, merchant, "Completed", 200, "102.000001"))
}

// send posts signed webhooks until ingest stored each.
func (s *stack) send(t *testing.T, bodies ...[]byte) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	for _, b := range bodies {
		require.Eventually(t, func() bool {
			resp, err := client.Do(s.signer.Request(t, "http://"+s.ing.PublicAddr()+ingest.WebhookPath, b))
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, 10*time.Second, 50*time.Millisecond)
	}
}

// completedOrder is a completed order's history, with a late payment.
func completedOrder(orderID, merchant string, late bool) [][]byte {
	h := [][]byte{
		testutil.OrderEvent(orderID+"-pending", orderID, merchant, "Pending", 100, "0"),
		testutil.TransactionEvent(orderID+"-txc", "completed", orderID, orderID+"-tx1", "102.000001"),
		testutil.OrderEvent(orderID+"-completed", orderID, merchant, "Completed", 200, "102.000001"),
	}
	if late {
		h = append(h, testutil.TransactionEvent(orderID+"-late", "late", orderID, orderID+"-tx2", "5.123456"))
	}
	return h
}

// forge publishes, as the operator user may (for redrive), an event signed
// by a key nobody trusts: the workers dead-letter it untrusted.
func (s *stack) forge(t *testing.T, body []byte) {
	t.Helper()
	nc, err := nats.Connect(s.ing.NATSURL(), s.ing.Credentials().Login(natsembed.UserOperator)...)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	env, err := cobo.ParseEnvelope(body)
	require.NoError(t, err)
	d := cobo.Delivery{Envelope: env, Body: body, ReceivedAt: time.Now()}
	d.Timestamp, d.Signature = testutil.NewSigner(t).Sign(body)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = js.PublishMsg(ctx, events.NewMsg(d))
	require.NoError(t, err)
}

// call makes an admin API call with the token and decodes the answer.
func (s *stack) call(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.con.URL()+path, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(b, out), string(b))
	}
	return resp.StatusCode
}

// seed sends the orders every console test looks at and waits until the
// workers settled them:
//
//   - O-A (M1001) completed with a late payment: its developer item stuck
//     pending, its referral failed, the late payment credited;
//   - O-B (M1002) completed: its referral failed;
//   - O-C (M1003) expired; O-D (M1002) processing; O-E (M1001) pending;
//   - O-U (M1003) completed, but unknown to Cobo: dead-lettered
//     unknown_order (until registered and redriven);
//   - a forged Completed event for O-C: dead-lettered untrusted.
func (s *stack) seed(t *testing.T) {
	t.Helper()
	for _, o := range []struct{ id, merchant string }{{"O-A", "M1001"}, {"O-B", "M1002"}, {"O-C", "M1003"}, {"O-D", "M1002"}, {"O-E", "M1001"}} {
		s.register(o.id, o.merchant)
	}
	var all [][]byte
	all = append(all, completedOrder("O-A", "M1001", true)...)
	all = append(all, completedOrder("O-B", "M1002", false)...)
	all = append(all,
		testutil.OrderEvent("O-C-pending", "O-C", "M1003", "Pending", 100, "0"),
		testutil.OrderEvent("O-C-expired", "O-C", "M1003", "Expired", 300, "0"),
		testutil.OrderEvent("O-D-pending", "O-D", "M1002", "Pending", 100, "0"),
		testutil.TransactionEvent("O-D-txc", "completed", "O-D", "O-D-tx1", "50"),
		testutil.OrderEvent("O-E-pending", "O-E", "M1001", "Pending", 100, "0"),
	)
	all = append(all, completedOrder("O-U", "M1003", false)...)
	s.send(t, all...)
	s.forge(t, testutil.OrderEvent("forged-C", "O-C", "M1003", "Completed", 999, "1000000"))

	require.Eventually(t, func() bool {
		st := s.con.Index().Stats()
		var ov console.Overview
		s.call(t, http.MethodGet, "/api/v1/overview", nil, &ov)
		return st.Ready && st.Orders == 6 && st.Allocations["cobo"]["failed"] == 2 && st.Stuck == 1 &&
			st.Allocations["cobo"]["completed"] == 1 && ov.DeadLetters == 2
	}, 30*time.Second, 100*time.Millisecond, "the seeded orders settle")
}
