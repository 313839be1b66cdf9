package clustertest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

// rules split every order to Cobo and BitGo destinations and credit late
// payments, so that the worker user exercises every allocation resource.
const rules = `{"splits": [
   {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"},
   {"merchant_id": "*", "destination_account": "bitgo:conn-1", "share": "0.02", "description": "settlement"}],
 "late_payments": "credit_merchant"}`

// providers starts the Cobo and BitGo sandboxes and returns the worker's
// allocation config against them.
func providers(t *testing.T, orders []history) (*worker.AllocationConfig, *cobosim.Sim, *bitgosim.Sim) {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	quiet := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	csim := cobosim.New(cobosim.Config{APIKeys: []string{api.APIKey()}, Logger: quiet})
	csrv := httptest.NewServer(csim)
	t.Cleanup(csrv.Close)
	registerOrders(csim, orders...)

	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	bsim := bitgosim.New(bitgosim.Config{EnterpriseID: "ent-1", AccessToken: "test-token", SigningPub: key.PubKey(), Logger: quiet})
	bsrv := httptest.NewServer(bsim)
	t.Cleanup(bsrv.Close)

	r, err := allocation.ParseRules([]byte(rules))
	require.NoError(t, err)
	return &worker.AllocationConfig{
		Rules: r,
		Cobo: cobo.ClientConfig{BaseURL: csrv.URL + "/v2", Signer: api, MaxAttempts: 4,
			BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond},
		Batcher: allocation.BatcherConfig{BatchWait: 50 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond, SendTimeout: 5 * time.Second},
		BitGo: &bitgo.Config{BaseURL: bsrv.URL, EnterpriseID: "ent-1", AccessToken: "test-token", SigningKey: key,
			Currencies: bitgo.DefaultCurrencies(), HTTP: &http.Client{Timeout: time.Second},
			MaxAttempts: 3, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
		BitGoSender:   allocation.BitGoSenderConfig{Poll: 50 * time.Millisecond, Retry: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, SendTimeout: 5 * time.Second},
		IntentAckWait: 3 * time.Second,
	}, csim, bsim
}

// TestDeployedPermissions runs the real ingest and a real worker, with
// allocations to both providers, under the users of deploy/nats on a
// three-node cluster built from the committed config. Everything they do
// must be allowed (no node logs a violation), while the worker cannot store
// a webhook event and ingest cannot write order state; the operator lists
// and redrives dead letters and re-applies events with the real tooling.
func TestDeployedPermissions(t *testing.T) {
	logs := newLogBook(t)
	c := startCluster(t)
	_, admin := c.connect(t, adminUser, nil)

	// Nobody gets in without a user.
	_, err := nats.Connect(c.url(), nats.MaxReconnects(0))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	// The monitoring port answers, for the Prometheus exporter.
	resp, err := httpClient.Get("http://" + c.nodes[0].MonitorAddr().String() + "/healthz?js-enabled-only=true")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// The system account user sees every node, as the NATS surveyor does.
	sys, _ := c.connect(t, sysUser, nil)
	sub, err := sys.SubscribeSync(sys.NewRespInbox())
	require.NoError(t, err)
	require.NoError(t, sys.PublishRequest("$SYS.REQ.SERVER.PING", sub.Subject, nil))
	for range 3 {
		_, err := sub.NextMsg(5 * time.Second)
		require.NoError(t, err)
	}

	signer := testutil.NewSigner(t)
	ing := startIngest(t, c, signer, logs)
	orders := histories("O-perm", 4)
	alloc, csim, bsim := providers(t, orders)
	// One batch send times out before Cobo answers, so that the batch stays
	// in its bucket while the other worker's batcher recovery lists and
	// reads it, as it does when a worker crashed mid-send.
	csim.InjectFault(cobosim.Fault{Kind: cobosim.FaultTimeout, Count: 1, Delay: 2 * time.Second,
		Method: http.MethodPost, PathPrefix: "/v2/payments/batch_allocations"})
	w1 := startWorker(t, c, "w1", newObserved(), logs, alloc)
	w2 := startWorker(t, c, "w2", newObserved(), logs, alloc)
	info := streamInfo(t, admin, events.StreamName)
	require.Equal(t, 3, info.Config.Replicas)
	for _, url := range []string{"http://" + ing.AdminAddr() + "/readyz", "http://" + w1.W.MetricsAddr() + "/readyz"} {
		resp, err := httpClient.Get(url)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, url)
	}

	// The worker user cannot store a webhook event, forged or not: the
	// server drops the publish, the client only hears of it as an async
	// permission error, and the stream is unchanged.
	workerErrs := make(chan error, 10)
	_, wjs := c.connect(t, workerUser, workerErrs)
	forged := testutil.OrderEvent("forged-1", "O-perm-000", "M1001", "Completed", 999, "1000000")
	before := streamMsgs(t, admin, events.StreamName)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = wjs.Publish(ctx, events.Subject(cobo.EventOrderStatusUpdated, "O-perm-000"), forged)
	cancel()
	require.Error(t, err, "no acknowledgement for a refused publish")
	select {
	case err := <-workerErrs:
		require.ErrorIs(t, err, nats.ErrPermissionViolation)
		require.Contains(t, err.Error(), `Publish to "paystream.events.payment_order_status_updated.O-perm-000"`)
	case <-time.After(5 * time.Second):
		t.Fatal("the worker user was not told its publish was refused")
	}
	require.Equal(t, before, streamMsgs(t, admin, events.StreamName))

	// Ingest cannot write order state, only read it.
	ingestErrs := make(chan error, 10)
	inc, _ := c.connect(t, ingestUser, ingestErrs)
	require.NoError(t, inc.Publish("$KV."+events.OrdersBucket+"."+"O-perm-000", []byte(`{"status":"Completed"}`)))
	require.NoError(t, inc.Flush())
	select {
	case err := <-ingestErrs:
		require.ErrorIs(t, err, nats.ErrPermissionViolation)
	case <-time.After(5 * time.Second):
		t.Fatal("the ingest user was not told its publish was refused")
	}
	expected := 2 // the two refusals above

	// The real processes under their users: ingest stores signed webhooks,
	// the worker turns them into order state and allocations.
	for _, h := range orders {
		for _, ev := range h.events {
			d, err := deliver(signer, ing, ev)
			require.NoError(t, err)
			require.Equal(t, "accepted", d.status)
		}
	}
	for _, h := range orders {
		waitFor(t, 20*time.Second, "order "+h.orderID, func() bool {
			v, ok := getOrder(t, ing, h.orderID)
			return ok && h.reached(v)
		})
		h.requireFinal(t, ing)
	}
	v, ok := getOrder(t, ing, "O-perm-000")
	require.True(t, ok)
	require.Equal(t, domain.StatusCompleted, v.Status, "the forged event changed nothing")
	for _, h := range orders {
		if h.final == domain.StatusCompleted {
			waitFor(t, 20*time.Second, "allocations of "+h.orderID, func() bool { return allocated(t, ing, h.orderID) })
		}
	}
	require.Len(t, csim.Items(), 6, "referral and late payment of three orders")
	require.Len(t, bsim.Allocations(), 3)

	// A webhook the worker can never apply goes to the dead-letter stream.
	bad := testutil.TransactionEvent("bad-late", "late", "O-perm-bad", "tx-bad", "0")
	_, err = deliver(signer, ing, bad)
	require.NoError(t, err)
	waitFor(t, 20*time.Second, "the dead letter", func() bool { return streamMsgs(t, admin, events.DLQStreamName) == 1 })

	// The operator lists and redrives it with the real tooling (worker dlq
	// list|redrive): the copy is stored again, the dead letter deleted,
	// and the worker refuses the copy again: a new dead letter.
	_, ojs := c.connect(t, operatorUser, nil)
	var out bytes.Buffer
	n, err := replay.ListDeadLetters(context.Background(), replay.DLQConfig{JetStream: ojs, Out: &out})
	require.NoError(t, err)
	require.Equal(t, 1, n, out.String())
	n, err = replay.Redrive(context.Background(), replay.DLQConfig{JetStream: ojs, Seq: 1, Out: &out})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Contains(t, out.String(), `"removed":true`)
	waitFor(t, 20*time.Second, "the redriven event dead-lettered again", func() bool {
		st := streamInfo(t, admin, events.DLQStreamName).State
		return st.Msgs == 1 && st.LastSeq == 2
	})

	// With no worker running, the operator re-applies one order's stored
	// events (worker replay -verify -apply): order state and allocation
	// intents written as the operator; a worker then delivers the intents.
	w1.Stop(t)
	w2.Stop(t)
	replayed := completedHistory("O-perm-replay")
	registerOrders(csim, replayed)
	for _, ev := range replayed.events {
		_, err := deliver(signer, ing, ev)
		require.NoError(t, err)
	}
	verifier, err := cobo.NewVerifier(signer.PubHex)
	require.NoError(t, err)
	sum, err := replay.Replay(context.Background(), replay.Config{
		JetStream: ojs, Select: replay.Selection{OrderID: replayed.orderID}, Verifier: verifier,
		Apply: true, Allocation: alloc, Out: &out,
	})
	require.NoError(t, err, out.String())
	require.Equal(t, replay.Summary{Events: 5, Verified: 5, Applied: 5}, sum)
	v, ok = getOrder(t, ing, replayed.orderID)
	require.True(t, ok)
	require.True(t, replayed.reached(v), "applied by the operator before any worker saw it: %+v", v)
	startWorker(t, c, "w3", newObserved(), logs, alloc)
	waitFor(t, 20*time.Second, "allocations of "+replayed.orderID, func() bool { return allocated(t, ing, replayed.orderID) })
	require.Len(t, csim.Items(), 8, "referral and replayed payment of four orders")
	require.Len(t, bsim.Allocations(), 4)

	// Let batch recovery list its bucket a few times before judging.
	time.Sleep(300 * time.Millisecond)
	got := c.viol.all()
	require.Len(t, got, expected, "only the refusals the test provoked: %v", got)
	require.Contains(t, got[0]+got[1], `"PAYSTREAM/user:worker" - Publish Violation - Subject "paystream.events.`)
	require.Contains(t, got[0]+got[1], `"PAYSTREAM/user:ingest" - Publish Violation - Subject "$KV.paystream_orders.`)
}

// registerOrders tells the Cobo sandbox the orders, as Cobo knows every
// order it sends events for: a late payment handled before its order's
// first event makes the worker fetch the order.
func registerOrders(csim *cobosim.Sim, orders ...history) {
	for _, h := range orders {
		csim.PutOrder(cobo.OrderData{OrderID: h.orderID, MerchantID: "M1001", PSPOrderCode: "P-" + h.orderID, Status: string(h.final),
			PricingCurrency: "USD", PricingAmount: amount("100.00"), FeeAmount: amount("2.00"), PayableCurrency: "ETH_USDT",
			PayableAmount: amount("102.00"), ReceivedTokenAmount: amount("102.000001"), UpdatedTimestamp: 200})
	}
}

// allocated reports whether a completed order's three items (referral,
// BitGo settlement, late payment) are all completed.
func allocated(t *testing.T, ing *ingest.Service, orderID string) bool {
	t.Helper()
	v, _ := getOrder(t, ing, orderID)
	done := 0
	for _, a := range v.Allocations {
		if a.Status == domain.AllocCompleted {
			done++
		}
	}
	return done == 3
}

func amount(s string) cobo.Amount {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		panic(err)
	}
	return a
}
