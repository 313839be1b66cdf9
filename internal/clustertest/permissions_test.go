package clustertest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/console"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/reconcile"
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
		Cobo: cobo.ClientConfig{BaseURL: csrv.URL + "/v2", Signer: api,
			Config: httpretry.Config{MaxAttempts: 4, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond}},
		Batcher: allocation.BatcherConfig{BatchWait: 50 * time.Millisecond, RecoverEvery: 100 * time.Millisecond, RecoverAfter: 300 * time.Millisecond, SendTimeout: 5 * time.Second},
		BitGo: &bitgo.Config{BaseURL: bsrv.URL, EnterpriseID: "ent-1", AccessToken: "test-token", SigningKey: key,
			Currencies: bitgo.DefaultCurrencies(),
			Config:     httpretry.Config{HTTP: &http.Client{Timeout: time.Second}, MaxAttempts: 3, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond}},
		BitGoSender:   allocation.BitGoSenderConfig{Poll: 50 * time.Millisecond, Retry: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, SendTimeout: 5 * time.Second},
		IntentAckWait: 3 * time.Second,
		// Sweeps run often, so that listing and removing the outbox marks
		// happens under the deployed permissions during the test.
		Sweeper: allocation.SweeperConfig{OrphanAfter: 200 * time.Millisecond},
		// So do reconciliation passes: the point bucket is created, read
		// and moved, and orders repaired, under the worker user.
		Reconcile: reconcile.Config{Every: 200 * time.Millisecond},
	}, csim, bsim
}

// lostOrder is an order Cobo completed, with a deposit and a late deposit,
// whose webhooks Cobo gave up on: only reconciliation can find it.
func lostOrder(orderID string) cobo.OrderData {
	notLate, late := false, true
	o := testutil.CoboOrder(orderID, "M1001", "Completed", time.Now().Unix(), "102.000001",
		testutil.CoboTx(orderID+"-tx1", "0x1-"+orderID, "102.000001", &notLate),
		testutil.CoboTx(orderID+"-tx2", "0x2-"+orderID, "5.123456", &late))
	o.CreatedTimestamp = cobo.Int64(time.Now().Add(-time.Minute).Unix())
	return o
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
	orders := histories("O-perm", 4)
	alloc, csim, bsim := providers(t, orders)
	lost := lostOrder("O-perm-lost")
	csim.PutOrder(lost)
	// One batch send times out before Cobo answers, so that the batch stays
	// in its bucket while the other worker's batcher recovery lists and
	// reads it, as it does when a worker crashed mid-send.
	csim.InjectFault(cobosim.Fault{Kind: cobosim.FaultTimeout, Count: 1, Delay: 2 * time.Second,
		Method: http.MethodPost, PathPrefix: "/v2/payments/batch_allocations"})
	// A new deployment: ingest and two workers start at the same moment and
	// race to create the streams, buckets and consumers, with create-only
	// permissions (no STREAM.UPDATE for either user).
	type started struct {
		s   *ingest.Service
		err error
	}
	ingested := make(chan started, 1)
	go func() {
		s, err := ingest.Start(context.Background(), ingestConfig(c, signer, logs))
		ingested <- started{s, err}
	}()
	ws := testutil.RunWorkers(t, workerConfig(t, c, signer, "w1", newObserved(), logs, alloc), workerConfig(t, c, signer, "w2", newObserved(), logs, alloc))
	w1, w2 := ws[0], ws[1]
	st := <-ingested
	ing := keepIngest(t, st.s, st.err)
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
	wnc, wjs := c.connect(t, workerUser, workerErrs)
	forged := testutil.OrderEvent("forged-1", "O-perm-000", "M1001", "Completed", 999, "1000000")
	before := streamMsgs(t, admin, events.StreamName)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = wjs.Publish(ctx, events.Subject(cobo.EventOrderStatusUpdated, "O-perm-000"), forged)
	cancel()
	require.Error(t, err, "no acknowledgement for a refused publish")
	requireRefused(t, workerErrs, "the worker user's publish", `Publish to "paystream.events.payment_order_status_updated.O-perm-000"`)
	require.Equal(t, before, streamMsgs(t, admin, events.StreamName))

	// Nor may it read what the server answers ingest (the acks of stored
	// webhooks): every user has inboxes of its own.
	_, err = wnc.SubscribeSync(ingestUser.inbox + ".>")
	require.NoError(t, err, "a subscription is refused asynchronously")
	require.NoError(t, wnc.Flush())
	requireRefused(t, workerErrs, "the worker user's subscription", `Subscription to "_INBOX_ingest.>"`)

	// Ingest cannot write order state, only read it.
	ingestErrs := make(chan error, 10)
	inc, ijs := c.connect(t, ingestUser, ingestErrs)
	require.NoError(t, inc.Publish("$KV."+events.OrdersBucket+"."+"O-perm-000", []byte(`{"status":"Completed"}`)))
	require.NoError(t, inc.Flush())
	requireRefused(t, ingestErrs, "the ingest user's publish", "")

	// Neither may change a stream: a republish rule would make the server
	// copy every stored message onto subjects the user may not publish to
	// (a worker turning dead letters into webhook events, ingest turning
	// webhooks into allocation intents).
	for _, tc := range []struct {
		js          jetstream.JetStream
		errs        chan error
		stream, dst string
	}{
		{wjs, workerErrs, events.DLQStreamName, "paystream.events.payment_order_status_updated.forged"},
		{ijs, ingestErrs, events.StreamName, "paystream.alloc.cobo.forged"},
	} {
		cfg := streamInfo(t, admin, tc.stream).Config
		cfg.RePublish = &jetstream.RePublish{Source: ">", Destination: tc.dst}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := tc.js.UpdateStream(ctx, cfg)
		cancel()
		require.Error(t, err, tc.stream)
		requireRefused(t, tc.errs, "the update of "+tc.stream, `"$JS.API.STREAM.UPDATE.`+tc.stream+`"`)
		require.Nil(t, streamInfo(t, admin, tc.stream).Config.RePublish, tc.stream)
	}
	expected := 5 // the five refusals above

	// Changing a stream is the deployed admin user's job (with the nats
	// CLI); the workers started later keep the change and report it.
	_, adminJS := c.connect(t, deployAdmin, nil)
	dlq := streamInfo(t, admin, events.DLQStreamName).Config
	dlq.MaxAge = 30 * 24 * time.Hour
	_, err = adminJS.UpdateStream(context.Background(), dlq)
	require.NoError(t, err)

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
		testutil.WaitFor(t, 20*time.Second, "order "+h.orderID, func() bool {
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
			testutil.WaitFor(t, 20*time.Second, "allocations of "+h.orderID, func() bool { return allocated(t, ing, h.orderID) })
		}
	}
	// The order no webhook announced is repaired by the workers'
	// reconciliation and allocated.
	testutil.WaitFor(t, 20*time.Second, "allocations of the order found by reconciliation", func() bool { return allocated(t, ing, lost.OrderID) })
	require.Len(t, csim.Items(), 8, "referral and late payment of four orders")
	require.Len(t, bsim.Allocations(), 4)

	// A webhook the worker can never apply goes to the dead-letter stream.
	bad := testutil.TransactionEvent("bad-late", "late", "O-perm-bad", "tx-bad", "0")
	_, err = deliver(signer, ing, bad)
	require.NoError(t, err)
	testutil.WaitFor(t, 20*time.Second, "the dead letter", func() bool { return streamMsgs(t, admin, events.DLQStreamName) == 1 })

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
	testutil.WaitFor(t, 20*time.Second, "the redriven event dead-lettered again", func() bool {
		st := streamInfo(t, admin, events.DLQStreamName).State
		return st.Msgs == 1 && st.LastSeq == 2
	})

	// The operator console (worker console) runs as the operator too: its
	// orders index watches the bucket, its overview reads the consumers'
	// lag, its pages an order's timeline and the dead letters.
	con, err := console.Start(context.Background(), console.Config{
		NATSURL: c.url(), NATSOptions: []nats.Option{operatorUser.opt()}, Listen: "127.0.0.1:0", Token: "console-token",
		Verifier: signer.Verifier(t), Allocation: alloc.Plan(), SampleEvery: 100 * time.Millisecond, Logger: logs.logger("console"),
	})
	require.NoError(t, err)
	testutil.WaitFor(t, 10*time.Second, "the console's index and overview", func() bool {
		code, body := consoleGet(t, con, "/api/v1/overview")
		return code == http.StatusOK && con.Index().Stats().Orders >= 5 && strings.Contains(body, `"paystream-batcher"`)
	})
	for _, path := range []string{"/api/v1/orders", "/api/v1/orders/O-perm-000/events", "/api/v1/dead-letters", "/ui/orders/O-perm-000", "/ui/dead-letters"} {
		code, body := consoleGet(t, con, path)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	require.NoError(t, con.Shutdown(context.Background()))

	// With no worker running and the orders bucket lost (deleted by the
	// admin), the operator re-applies one order's stored events (worker
	// replay -verify -apply -stream-replicas 3): the bucket, order state and
	// allocation intents written as the operator; a worker then delivers
	// the intents.
	w1.Stop(t)
	w2.Stop(t)
	// Cobo's list moves on, and the repaired order leaves the window
	// reconciliation looks at (as it does after the overlap): losing the
	// orders bucket below must not make a later pass plan it again, which
	// could not recover its allocations' outcomes (README, replay -apply).
	lost.CreatedTimestamp, lost.UpdatedTimestamp = 0, 200
	csim.PutOrder(lost)
	require.NoError(t, adminJS.DeleteKeyValue(context.Background(), events.OrdersBucket))
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
		Apply: true, Allocation: alloc.Plan(), Stream: events.StreamConfig{Replicas: 3}, Out: &out,
	})
	require.NoError(t, err, out.String())
	require.Equal(t, replay.Summary{Events: 5, Verified: 5, Applied: 5}, sum)
	// Order reads may be served by a replica a moment behind the leader
	// (the bucket allows direct gets), so the replayed state is waited for.
	testutil.WaitFor(t, 5*time.Second, "the order applied by the operator before any worker saw it", func() bool {
		v, ok := getOrder(t, ing, replayed.orderID)
		return ok && replayed.reached(v)
	})
	require.Equal(t, 3, streamInfo(t, admin, "KV_"+events.OrdersBucket).Config.Replicas)
	// The operator reconciles by hand (worker reconcile) an order whose
	// webhooks never came: its state and intents written, and the point
	// moved, as the operator.
	byHand := lostOrder("O-perm-byhand")
	csim.PutOrder(byHand)
	rec, err := worker.NewReconciler(context.Background(), worker.ReconcilerConfig{JetStream: ojs, Allocation: alloc})
	require.NoError(t, err)
	rsum, err := rec.Pass(context.Background(), reconcile.PassOptions{})
	require.NoError(t, err)
	require.Equal(t, 1, rsum.Missing, "only the order no webhook announced")
	require.Equal(t, 1, rsum.Repaired)
	require.True(t, rsum.PointAdvanced)
	startWorker(t, c, signer, "w3", newObserved(), logs, alloc)
	require.Equal(t, 30*24*time.Hour, streamInfo(t, admin, events.DLQStreamName).Config.MaxAge, "a worker never changes a stream")
	require.Contains(t, strings.Join(logs.all(), "\n"), `"component":"w3","stream":"PAYSTREAM_DLQ","drift":["MaxAge: have 720h0m0s, want 2160h0m0s"]`)
	testutil.WaitFor(t, 20*time.Second, "allocations of "+replayed.orderID, func() bool { return allocated(t, ing, replayed.orderID) })
	testutil.WaitFor(t, 20*time.Second, "allocations of "+byHand.OrderID, func() bool { return allocated(t, ing, byHand.OrderID) })
	require.Len(t, csim.Items(), 12, "referral and late payment of six orders")
	require.Len(t, bsim.Allocations(), 6)

	// Every item is final, so the sweep removes every outbox mark.
	testutil.WaitFor(t, 10*time.Second, "the outbox marks removed", func() bool {
		kv, err := admin.KeyValue(context.Background(), allocation.OutboxBucket)
		require.NoError(t, err)
		keys, err := kv.ListKeys(context.Background())
		require.NoError(t, err)
		n := 0
		for range keys.Keys() {
			n++
		}
		return n == 0
	})
	// Let batch recovery list its bucket a few times before judging.
	time.Sleep(300 * time.Millisecond)
	got := c.viol.all()
	require.Len(t, got, expected, "only the refusals the test provoked: %v", got)
	all := strings.Join(got, "\n")
	require.Contains(t, all, `"PAYSTREAM/user:worker" - Publish Violation - Subject "paystream.events.`)
	require.Contains(t, all, `"PAYSTREAM/user:ingest" - Publish Violation - Subject "$KV.paystream_orders.`)
	require.Contains(t, all, `"PAYSTREAM/user:worker" - Publish Violation - Subject "$JS.API.STREAM.UPDATE.PAYSTREAM_DLQ"`)
	require.Contains(t, all, `"PAYSTREAM/user:worker" - Subscription Violation - Subject "_INBOX_ingest.>"`)
	require.Contains(t, all, `"PAYSTREAM/user:ingest" - Publish Violation - Subject "$JS.API.STREAM.UPDATE.PAYSTREAM_EVENTS"`)
}

// consoleGet calls the console with its token.
func consoleGet(t *testing.T, con *console.Console, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, con.URL()+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer console-token")
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// requireRefused waits up to 5 s for the permission violation the client
// hears of asynchronously when the server refuses what, and checks that
// its text contains want (unless want is empty).
func requireRefused(t *testing.T, errs <-chan error, what, want string) {
	t.Helper()
	select {
	case err := <-errs:
		require.ErrorIs(t, err, nats.ErrPermissionViolation, what)
		if want != "" {
			require.Contains(t, err.Error(), want, what)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no permission error for %s", what)
	}
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
