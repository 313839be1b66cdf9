package allocation_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/testutil"
)

// The BitGo sender's retry and lookup rules against a real JetStream and
// the BitGo simulator, with answers BitGo may give scripted in front of
// it. The end-to-end cases are in internal/e2e/bitgo_nonce_test.go.

const rigConnection = "conn-1"

// bitgoRig is a JetStream server with the allocation resources, an order
// store, and the BitGo simulator behind a scriptable front.
type bitgoRig struct {
	js      jetstream.JetStream
	store   *events.OrderStore
	sim     *bitgosim.Sim
	client  *bitgo.Client
	reg     *prometheus.Registry
	metrics *allocation.Metrics
	log     zerolog.Logger

	mu sync.Mutex
	// script may answer the n-th POST allocation (from 1) itself; it
	// returns false to hand the request to the simulator.
	script  func(n int, w http.ResponseWriter) bool
	posts   int
	lookups int
}

func newBitGoRig(t *testing.T, simCfg bitgosim.Config, script func(n int, w http.ResponseWriter) bool) *bitgoRig {
	t.Helper()
	srv := testutil.StartJetStream(t)
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	require.NoError(t, allocation.EnsureResources(ctx, js, events.StreamConfig{}, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	r := &bitgoRig{js: js, store: events.NewOrderStore(kv), script: script, reg: prometheus.NewRegistry(),
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	r.metrics = allocation.NewMetrics(r.reg)
	simCfg.EnterpriseID, simCfg.AccessToken, simCfg.SigningPub, simCfg.Logger = "ent-1", "token", key.PubKey(), r.log
	r.sim = bitgosim.New(simCfg)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		var n int
		switch {
		case req.Method == http.MethodPost:
			r.posts++
			n = r.posts
		case strings.HasSuffix(req.URL.Path, "/clients/allocations"):
			r.lookups++
		}
		script := r.script
		r.mu.Unlock()
		if n > 0 && script != nil && script(n, w) {
			return
		}
		r.sim.ServeHTTP(w, req)
	}))
	t.Cleanup(hs.Close)
	r.client, err = bitgo.New(bitgo.Config{
		BaseURL: hs.URL, EnterpriseID: "ent-1", AccessToken: "token", SigningKey: key, Currencies: bitgo.DefaultCurrencies(),
		Config: httpretry.Config{HTTP: &http.Client{Timeout: 500 * time.Millisecond}, MaxAttempts: 3, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond},
	})
	require.NoError(t, err)
	return r
}

// answer is a script step answering status with body.
func answer(w http.ResponseWriter, status int, body string) bool {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return true
}

func (r *bitgoRig) counts() (posts, lookups int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.posts, r.lookups
}

// plant stores an order with one planned BitGo item of 2 USDT and
// publishes its intent as the outbox does.
func (r *bitgoRig) plant(t *testing.T, orderID string) domain.AllocationItem {
	t.Helper()
	it := domain.AllocationItem{
		ID: orderID + ":split:0:bitgo:" + rigConnection, Kind: domain.KindSplit, OrderID: orderID, Backend: domain.BackendBitGo,
		TokenID: "ETH_USDT", Amount: decimal.RequireFromString("2"), Source: "M1001", Destination: allocation.BitGoPrefix + rigConnection,
		Description: "settlement " + orderID, Status: domain.AllocPlanned,
	}
	o := &domain.Order{OrderID: orderID, Allocations: []domain.AllocationItem{it}}
	ctx := context.Background()
	_, err := r.store.Put(ctx, o, 0)
	require.NoError(t, err)
	_, err = allocation.NewOutbox(r.js).Publish(ctx, o)
	require.NoError(t, err)
	return it
}

func (r *bitgoRig) sender(t *testing.T) *allocation.BitGoSender {
	t.Helper()
	s, err := allocation.NewBitGoSender(context.Background(), r.js, r.client, r.store, allocation.BitGoSenderConfig{
		Poll: 20 * time.Millisecond, Retry: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond, SendTimeout: 2 * time.Second,
		Logger: r.log, Metrics: r.metrics,
	})
	require.NoError(t, err)
	return s
}

// run runs a sender until the test ends.
func (r *bitgoRig) run(t *testing.T) {
	t.Helper()
	s := r.sender(t)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = s.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
}

// final waits until the order's item is final and returns it.
func (r *bitgoRig) final(t *testing.T, orderID string) domain.AllocationItem {
	t.Helper()
	var it domain.AllocationItem
	require.Eventually(t, func() bool {
		o, _, err := r.store.Get(context.Background(), orderID)
		require.NoError(t, err)
		it = o.Allocations[0]
		return it.Final()
	}, 20*time.Second, 10*time.Millisecond)
	return it
}

// record reads the item's record from paystream_bitgo_requests.
func (r *bitgoRig) record(t *testing.T, itemID string) allocation.BitGoRecord {
	t.Helper()
	kv, err := r.js.KeyValue(context.Background(), allocation.BitGoRequestsBucket)
	require.NoError(t, err)
	e, err := kv.Get(context.Background(), events.Token(itemID))
	require.NoError(t, err)
	var rec allocation.BitGoRecord
	require.NoError(t, json.Unmarshal(e.Value(), &rec))
	return rec
}

// putRecord stores rec as the item's record, replacing any.
func (r *bitgoRig) putRecord(t *testing.T, rec any, itemID string) {
	t.Helper()
	kv, err := r.js.KeyValue(context.Background(), allocation.BitGoRequestsBucket)
	require.NoError(t, err)
	b, err := json.Marshal(rec)
	require.NoError(t, err)
	_, err = kv.Put(context.Background(), events.Token(itemID), b)
	require.NoError(t, err)
}

func (r *bitgoRig) prepare(t *testing.T, it domain.AllocationItem) bitgo.Request {
	t.Helper()
	req, err := r.client.Prepare(rigConnection, allocation.ClientExternalID(it.ID), it.TokenID, it.Amount, it.Description)
	require.NoError(t, err)
	return req
}

// requireOneAllocation checks BitGo holds exactly one allocation, the
// item's.
func (r *bitgoRig) requireOneAllocation(t *testing.T, it domain.AllocationItem) {
	t.Helper()
	all := r.sim.Allocations()
	require.Len(t, all, 1)
	require.Equal(t, allocation.ClientExternalID(it.ID), all[0].ClientExternalID)
	require.Equal(t, bitgo.Amount{Currency: "ofcusdt", Quantity: "2000000"}, all[0].Amount)
}

// TestBitGoFirstRequestRefusedFails: a definite 4xx to the item's first
// request, which BitGo had never seen, with nothing found by the lookup,
// is a failure: recorded with BitGo's error, never sent again.
func TestBitGoFirstRequestRefusedFails(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusNotFound} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			r := newBitGoRig(t, bitgosim.Config{NonceOnce: true}, func(_ int, w http.ResponseWriter) bool {
				return answer(w, status, `{"error":"connection is not yours"}`)
			})
			it := r.plant(t, "O-refused")
			r.run(t)
			got := r.final(t, "O-refused")
			require.Equal(t, domain.AllocFailed, got.Status)
			require.Contains(t, got.Reason, "refused by bitgo")
			require.Contains(t, got.Reason, "connection is not yours")
			time.Sleep(200 * time.Millisecond) // a few retry delays for a wrong resend
			posts, lookups := r.counts()
			require.Equal(t, 1, posts, "a failed item is never sent again")
			require.Positive(t, lookups, "failed only after the lookup found nothing")
			rec := r.record(t, it.ID)
			require.Equal(t, 1, rec.Sends)
			require.Len(t, rec.History, 1)
			require.Equal(t, bitgo.StatusReleased, rec.Status)
			require.Empty(t, r.sim.Allocations())
		})
	}
}

// TestBitGoRefusalsThatNeverFail: refusals that do not show that BitGo
// has no allocation make the item wait, look it up and sign it anew,
// never fail it; once BitGo accepts, it ends in one allocation.
func TestBitGoRefusalsThatNeverFail(t *testing.T) {
	cases := []struct {
		name   string
		cfg    bitgosim.Config
		faults []bitgosim.Fault
		script func(n int, w http.ResponseWriter) bool
		// fresh is whether a fresh request must have been signed.
		fresh bool
	}{
		{"403 on every send until the license is fixed", bitgosim.Config{}, nil, func(n int, w http.ResponseWriter) bool {
			return n <= 4 && answer(w, http.StatusForbidden, `{"error":"enterprise has no OES license"}`)
		}, true},
		{"first request dropped, every resend and the next fresh one refused 400", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultDrop}}, func(n int, w http.ResponseWriter) bool {
			return n >= 2 && n <= 4 && answer(w, http.StatusBadRequest, `{"error":"nonce has already been used"}`)
		}, true},
		{"first request dropped, resend refused 401 for the nonce", bitgosim.Config{NonceOnce: true, NonceReusedStatus: http.StatusUnauthorized}, []bitgosim.Fault{{Kind: bitgosim.FaultDrop}}, nil, true},
		{"reserved and retriable, the identical resend refused for the nonce", bitgosim.Config{NonceOnce: true}, []bitgosim.Fault{{Kind: bitgosim.FaultReserveRetriable}}, nil, true},
		{"answer lost, the replay answered 422 without an allocation", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultLoseResponse}}, func(n int, w http.ResponseWriter) bool {
			return n == 2 && answer(w, http.StatusUnprocessableEntity, `{"error":"clientExternalId already used"}`)
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newBitGoRig(t, tc.cfg, tc.script)
			for _, f := range tc.faults {
				r.sim.InjectFault(f)
			}
			it := r.plant(t, "O-wait")
			r.run(t)
			got := r.final(t, "O-wait")
			require.Equal(t, domain.AllocCompleted, got.Status, got.Reason)
			r.requireOneAllocation(t, it)
			require.Equal(t, r.sim.Allocations()[0].ID, got.ProviderID)
			require.Zero(t, itemCount(t, r.reg, domain.BackendBitGo, domain.AllocFailed))
			rec := r.record(t, it.ID)
			require.False(t, rec.Unclear)
			require.Equal(t, bitgo.StatusCleared, rec.Status)
			if !tc.fresh {
				require.Len(t, rec.History, 1, "found by the lookup, not signed again")
				return
			}
			require.GreaterOrEqual(t, len(rec.History), 2, "signed anew after the lookup")
			seen := map[string]bool{}
			sends := 0
			for _, h := range rec.History {
				require.Len(t, h.Nonce, 64)
				require.False(t, seen[h.Nonce], "every request has its own nonce")
				seen[h.Nonce] = true
				sends += h.Sends
			}
			require.Equal(t, "first", rec.History[0].Why)
			require.Equal(t, rec.Sends, sends)
			require.Equal(t, rec.History[len(rec.History)-1].Nonce, rec.Request.Nonce())
		})
	}
}

// TestBitGoReleasedReplayWithNothingThereFails: BitGo answers a resend
// 422 released and the list has no allocation under the
// clientExternalId: BitGo certainly did not make it.
func TestBitGoReleasedReplayWithNothingThereFails(t *testing.T) {
	r := newBitGoRig(t, bitgosim.Config{}, func(n int, w http.ResponseWriter) bool {
		return n == 2 && answer(w, http.StatusUnprocessableEntity, `{"allocation":{"id":"rel-1","status":"released","reason":"connection is inactive"},"error":"released"}`)
	})
	r.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultDrop})
	r.plant(t, "O-rel")
	r.run(t)
	got := r.final(t, "O-rel")
	require.Equal(t, domain.AllocFailed, got.Status)
	require.Contains(t, got.Reason, "connection is inactive")
	_, lookups := r.counts()
	require.Positive(t, lookups)
	require.Empty(t, r.sim.Allocations())
}

// TestBitGoRecordOfAnEarlierVersionIsLookedUpFirst: a record persisted by
// a version that counted sends only after making them (no history,
// attempts 0) may have been sent. It is looked up before anything is sent,
// and BitGo's allocation is recorded without a second one.
func TestBitGoRecordOfAnEarlierVersionIsLookedUpFirst(t *testing.T) {
	r := newBitGoRig(t, bitgosim.Config{NonceOnce: true, ReplayConflict: true}, nil)
	it := r.plant(t, "O-old")
	req := r.prepare(t, it)
	_, err := r.client.Send(context.Background(), req)
	require.NoError(t, err, "the earlier version's send reached BitGo; then it crashed")
	r.putRecord(t, map[string]any{"item": it, "request": req, "attempts": 0, "created_at": time.Now().UTC(), "updated_at": time.Now().UTC()}, it.ID)

	r.run(t)
	got := r.final(t, "O-old")
	require.Equal(t, domain.AllocCompleted, got.Status, got.Reason)
	r.requireOneAllocation(t, it)
	posts, _ := r.counts()
	require.Equal(t, 1, posts, "nothing sent again")
	rec := r.record(t, it.ID)
	require.Len(t, rec.History, 1)
	require.Equal(t, req.Nonce(), rec.History[0].Nonce)
}

// TestBitGoSendInFlightIsLeftAlone: while another sender's send of the
// item may still be answered, the item is neither looked up nor sent;
// once that send has given up, it is.
func TestBitGoSendInFlightIsLeftAlone(t *testing.T) {
	r := newBitGoRig(t, bitgosim.Config{NonceOnce: true}, nil)
	it := r.plant(t, "O-busy")
	req := r.prepare(t, it)
	now := time.Now().UTC()
	rec := allocation.BitGoRecord{Item: it, Request: req, Sends: 1, Unclear: true, SendingUntil: now.Add(1500 * time.Millisecond),
		History: []allocation.BitGoSigned{{Nonce: req.Nonce(), SignedAt: now, Why: "first", Sends: 1}}, CreatedAt: now, UpdatedAt: now}
	r.putRecord(t, rec, it.ID)

	r.run(t)
	time.Sleep(500 * time.Millisecond)
	posts, lookups := r.counts()
	require.Zero(t, posts)
	require.Zero(t, lookups)
	got := r.final(t, "O-busy")
	require.Equal(t, domain.AllocCompleted, got.Status, got.Reason)
	r.requireOneAllocation(t, it)
	_, lookups = r.counts()
	require.Positive(t, lookups)
}

// TestBitGoFreshRequestCompareAndSet: two senders look up the same
// unclear item at once and both sign a fresh request; the compare-and-set
// keeps the first, the second gets a conflict and sends nothing of its
// own.
func TestBitGoFreshRequestCompareAndSet(t *testing.T) {
	r := newBitGoRig(t, bitgosim.Config{NonceOnce: true}, nil)
	it := r.plant(t, "O-race")
	req := r.prepare(t, it)
	now := time.Now().UTC()
	r.putRecord(t, allocation.BitGoRecord{Item: it, Request: req, Sends: 1, Unclear: true, LastError: "timeout",
		History: []allocation.BitGoSigned{{Nonce: req.Nonce(), SignedAt: now, Why: "first", Sends: 1}}, CreatedAt: now, UpdatedAt: now}, it.ID)

	ctx := context.Background()
	a, b := r.sender(t), r.sender(t)
	recA, rev, err := a.StoredForTest(ctx, it.ID)
	require.NoError(t, err)
	recB, revB, err := b.StoredForTest(ctx, it.ID)
	require.NoError(t, err)
	require.Equal(t, rev, revB)

	_, err = a.ReconcileForTest(ctx, it, recA, rev)
	require.NoError(t, err)
	_, err = b.ReconcileForTest(ctx, it, recB, revB)
	require.ErrorIs(t, err, domain.ErrConflict)
	require.NotEqual(t, recA.Request.Nonce(), recB.Request.Nonce(), "each signed its own")

	kept := r.record(t, it.ID)
	require.Equal(t, recA.Request.Nonce(), kept.Request.Nonce(), "the first compare-and-set wins")
	require.False(t, kept.Unclear)
	require.Len(t, kept.History, 2)
	require.Equal(t, req.Nonce(), kept.History[0].Nonce)
	require.Contains(t, kept.History[1].Why, "timeout")
	require.True(t, kept.Request.SameAllocation(req))

	// The kept request is what goes out.
	r.run(t)
	got := r.final(t, "O-race")
	require.Equal(t, domain.AllocCompleted, got.Status, got.Reason)
	r.requireOneAllocation(t, it)
	require.Equal(t, recA.Request.Nonce(), r.record(t, it.ID).Request.Nonce())
}
