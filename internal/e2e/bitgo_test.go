package e2e_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// testRulesWithBitGo adds a BitGo split to testutil.Rules: 2% of each order to
// partner connection conn-1.
const testRulesWithBitGo = `{"splits": [
   {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"},
   {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"},
   {"merchant_id": "*", "destination_account": "bitgo:conn-1", "share": "0.02", "description": "settlement"}],
 "late_payments": "credit_merchant"}`

// bitgoSide is a BitGo simulator and the credentials workers use on it.
type bitgoSide struct {
	sim *bitgosim.Sim
	url string
	// token and key are what workers started next use; a test may change
	// them to start a worker with credentials BitGo refuses.
	token string
	key   *secp256k1.PrivateKey
}

func (b *bitgoSide) clientConfig(transport http.RoundTripper) *bitgo.Config {
	return &bitgo.Config{
		BaseURL: b.url, EnterpriseID: "ent-1", AccessToken: b.token, SigningKey: b.key,
		Currencies: bitgo.DefaultCurrencies(),
		Config: httpretry.Config{HTTP: &http.Client{Transport: transport, Timeout: 500 * time.Millisecond},
			MaxAttempts: 3, BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
	}
}

// startBitGoStack is startAllocStack with a BitGo split and simulator.
func startBitGoStack(t *testing.T, simCfg bitgosim.Config) *allocStack {
	t.Helper()
	s := startAllocStack(t, cobosim.Config{})
	s.addBitGo(t, simCfg)
	return s
}

// addBitGo gives the stack testRulesWithBitGo and a BitGo simulator.
func (s *allocStack) addBitGo(t *testing.T, simCfg bitgosim.Config) {
	t.Helper()
	rules, err := allocation.ParseRules([]byte(testRulesWithBitGo))
	require.NoError(t, err)
	s.rules = rules
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	simCfg.EnterpriseID, simCfg.AccessToken, simCfg.SigningPub = "ent-1", "test-token", key.PubKey()
	simCfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	sim := bitgosim.New(simCfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	s.bitgo = &bitgoSide{sim: sim, url: srv.URL, token: "test-token", key: key}
}

// requireBitGoOnce waits until each order's BitGo item is final with
// status want, then checks BitGo holds exactly one allocation per order,
// 2 USDT in base units, under the item's deterministic clientExternalId.
func (s *allocStack) requireBitGoOnce(t *testing.T, want string, orderIDs ...string) {
	t.Helper()
	wantExt := map[string]string{}
	for _, id := range orderIDs {
		var item domain.AllocationItem
		testutil.WaitFor(t, 30*time.Second, "bitgo allocation of "+id, func() bool {
			v, ok := getOrder(t, s.ing, id)
			if !ok {
				return false
			}
			for _, a := range v.Allocations {
				if a.Backend == domain.BackendBitGo && a.Final() {
					item = a
					return true
				}
			}
			return false
		})
		require.Equal(t, want, item.Status, "item %s: %s", item.ID, item.Reason)
		require.Equal(t, allocation.ClientExternalID(item.ID), item.RequestID)
		require.NotEmpty(t, item.ProviderID)
		wantExt[item.RequestID] = id
	}
	got := map[string]int{}
	for _, a := range s.bitgo.sim.Allocations() {
		_, ok := wantExt[a.ClientExternalID]
		require.True(t, ok, "unexpected allocation %+v", a)
		got[a.ClientExternalID]++
		require.Equal(t, "conn-1", a.ConnectionID)
		require.Equal(t, bitgo.Amount{Currency: "ofcusdt", Quantity: "2000000"}, a.Amount)
	}
	for ext, id := range wantExt {
		require.Equal(t, 1, got[ext], "order %s must be allocated exactly once at BitGo", id)
	}
}

func TestBitGoAllocationsExactlyOnceUnderFaults(t *testing.T) {
	cases := []struct {
		name   string
		cfg    bitgosim.Config
		faults []bitgosim.Fault
	}{
		{"happy path", bitgosim.Config{}, nil},
		{"500 before recording", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultError500, Count: 4}}},
		{"recorded, response lost, replay answered with the allocation", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultLoseResponse, Count: 2}}},
		{"recorded, response lost, replay refused 409", bitgosim.Config{ReplayConflict: true}, []bitgosim.Fault{{Kind: bitgosim.FaultLoseResponse, Count: 2}}},
		{"recorded, response timed out", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultSlow, Count: 1, Delay: time.Second}}},
		{"reserved retriable", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultReserveRetriable, Count: 3}}},
		{"reserved, then polled", bitgosim.Config{}, []bitgosim.Fault{{Kind: bitgosim.FaultReserved, Count: 2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startBitGoStack(t, tc.cfg)
			for _, f := range tc.faults {
				s.bitgo.sim.InjectFault(f)
			}
			s.startWorker(t, nil)
			ids := []string{"O-bg-1", "O-bg-2"}
			sendHistories(t, s, ids...)
			s.requireBitGoOnce(t, domain.AllocCompleted, ids...)
		})
	}
}

// TestBitGoWorkerKilledAfterResponse kills the worker once BitGo recorded
// the allocation but before the answer was read; a second worker resends
// the identical stored request and records the one allocation.
func TestBitGoWorkerKilledAfterResponse(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	g := &gate{mode: "after", hit: make(chan struct{}), suffix: "/allocations"}
	victim := s.startWorker(t, g)
	sendHistories(t, s, "O-bg-kill")
	<-g.hit
	victim.Kill()
	require.Len(t, s.bitgo.sim.Allocations(), 1, "BitGo recorded the allocation")
	s.startWorker(t, nil)
	s.startWorker(t, nil)
	s.requireBitGoOnce(t, domain.AllocCompleted, "O-bg-kill")
}

// TestBitGoCompletedFiveTimesRacingWorkers delivers each completion five
// times to three workers.
func TestBitGoCompletedFiveTimesRacingWorkers(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	for range 3 {
		s.startWorker(t, nil)
	}
	ids := []string{"O-bg5-1", "O-bg5-2", "O-bg5-3"}
	s.registerOrders(ids...)
	var all [][]byte
	for _, id := range ids {
		for round := range 5 {
			all = append(all, orderEventsWithSuffix(id, "-r"+string(rune('a'+round)))...)
		}
	}
	sendConcurrently(t, s.signer, s.ing, all, 8)
	s.requireBitGoOnce(t, domain.AllocCompleted, ids...)
}

// TestBitGoReleasedIsFailedNotRetried: a released allocation is a
// permanent failure with its reason, surfaced and never re-sent.
func TestBitGoReleasedIsFailedNotRetried(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	s.bitgo.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultRelease})
	w := s.startWorker(t, nil)
	sendHistories(t, s, "O-bg-rel")
	s.requireBitGoOnce(t, domain.AllocFailed, "O-bg-rel")
	v, _ := getOrder(t, s.ing, "O-bg-rel")
	for _, a := range v.Allocations {
		if a.Backend == domain.BackendBitGo {
			require.Contains(t, a.Reason, bitgosim.ReasonInsufficientBalance)
		}
	}
	time.Sleep(500 * time.Millisecond) // ten poll intervals for a wrong resend
	require.Len(t, s.bitgo.sim.Allocations(), 1)
	code, body := getJSON(t, "http://"+w.W.MetricsAddr()+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), `paystream_allocation_items_total{backend="bitgo",status="failed"} 1`)
}
