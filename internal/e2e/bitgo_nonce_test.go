package e2e_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/testutil"
)

// BitGo documents the nonce as unique per request and the signature as
// usable once, but also documents re-sending the identical request as the
// way to retry. These tests run the simulator refusing every nonce it has
// seen (-bitgo-nonce-once), combined with each of its answers to a
// repeated clientExternalId, and require one allocation per item whatever
// was lost on the way.

// TestBitGoNonceRefusedOnReplay: the first send reaches BitGo, which spends
// its nonce, but is lost before an allocation is made, and nobody answers.
// The resend of those identical bytes is refused for the nonce. BitGo has
// no allocation, so the item must be sent again with a fresh nonce, not
// failed.
func TestBitGoNonceRefusedOnReplay(t *testing.T) {
	cases := []struct {
		name string
		cfg  bitgosim.Config
	}{
		{"refused 400, replays answered with the allocation", bitgosim.Config{NonceOnce: true}},
		{"refused 400, replays refused 409", bitgosim.Config{NonceOnce: true, ReplayConflict: true}},
		{"refused 401", bitgosim.Config{NonceOnce: true, NonceReusedStatus: http.StatusUnauthorized}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startBitGoStack(t, tc.cfg)
			s.bitgo.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultDrop})
			s.startWorker(t, nil)
			sendHistories(t, s, "O-bg-drop")
			s.requireBitGoOnce(t, domain.AllocCompleted, "O-bg-drop")
			require.Positive(t, s.bitgo.sim.NoncesRefused(), "the resend of the dropped request was refused for its nonce")
			rec := s.bitgoRecord(t, "O-bg-drop")
			require.GreaterOrEqual(t, len(rec.History), 2, "a fresh request was signed after the lookup")
			require.NotEqual(t, rec.History[0].Nonce, rec.Request.Nonce())
			require.GreaterOrEqual(t, rec.Sends, 2)
		})
	}
}

// TestBitGoLostAnswerNonceOnce: BitGo made the allocation and the answer
// was lost; the replay is refused for its nonce. The item must be found,
// not sent again, under either answer to a repeated clientExternalId.
func TestBitGoLostAnswerNonceOnce(t *testing.T) {
	cases := []struct {
		name string
		cfg  bitgosim.Config
	}{
		{"replays answered with the allocation", bitgosim.Config{NonceOnce: true}},
		{"replays refused 409", bitgosim.Config{NonceOnce: true, ReplayConflict: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startBitGoStack(t, tc.cfg)
			s.bitgo.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultLoseResponse, Count: 2})
			s.startWorker(t, nil)
			ids := []string{"O-bg-lost-1", "O-bg-lost-2"}
			sendHistories(t, s, ids...)
			s.requireBitGoOnce(t, domain.AllocCompleted, ids...)
			require.Positive(t, s.bitgo.sim.NoncesRefused(), "a replay was refused for its nonce")
			for _, id := range ids {
				require.Len(t, s.bitgoRecord(t, id).History, 1, "%s: found by the lookup, never signed again", id)
			}
		})
	}
}

// TestBitGoWorkerKilledAfterResponseNonceOnce: the worker dies once BitGo
// recorded the allocation, before reading the answer; the worker that
// takes the item over must find it rather than allocate again.
func TestBitGoWorkerKilledAfterResponseNonceOnce(t *testing.T) {
	t.Parallel()
	for _, conflict := range []bool{false, true} {
		t.Run(map[bool]string{false: "replays answered with the allocation", true: "replays refused 409"}[conflict], func(t *testing.T) {
			s := startBitGoStack(t, bitgosim.Config{NonceOnce: true, ReplayConflict: conflict})
			g := &gate{mode: "after", hit: make(chan struct{}), suffix: "/allocations"}
			victim := s.startWorker(t, g)
			sendHistories(t, s, "O-bg-kill-n")
			<-g.hit
			victim.Kill()
			require.Len(t, s.bitgo.sim.Allocations(), 1, "BitGo recorded the allocation")
			s.startWorker(t, nil)
			s.requireBitGoOnce(t, domain.AllocCompleted, "O-bg-kill-n")
		})
	}
}

// TestBitGoRefusedCredentialsWait: while BitGo refuses paystream's
// credentials (401), items wait, they are never failed; once a worker has
// working ones, each completes exactly once. A wrong signing key is
// refused per request, so the item needs a request signed anew.
func TestBitGoRefusedCredentialsWait(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		spoil func(b *bitgoSide)
	}{
		{"wrong token", func(b *bitgoSide) { b.token = "rotated-token" }},
		{"wrong signing key", func(b *bitgoSide) {
			k, err := secp256k1.GeneratePrivateKey()
			require.NoError(t, err)
			b.key = k
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startBitGoStack(t, bitgosim.Config{NonceOnce: true})
			good := *s.bitgo
			tc.spoil(s.bitgo)
			bad := s.startWorker(t, nil)
			*s.bitgo = good
			sendHistories(t, s, "O-bg-401")
			testutil.WaitFor(t, 30*time.Second, "BitGo to refuse the worker a few times", func() bool {
				return metricValue(t, bad, `paystream_bitgo_answers_total{result="error"}`) >= 3
			})
			v, ok := getOrder(t, s.ing, "O-bg-401")
			require.True(t, ok)
			for _, a := range v.Allocations {
				if a.Backend == domain.BackendBitGo {
					require.False(t, a.Final(), "a refused credential never finishes an item: %+v", a)
				}
			}
			require.Empty(t, s.bitgo.sim.Allocations())
			require.Zero(t, metricValue(t, bad, `paystream_allocation_items_total{backend="bitgo",status="failed"}`))

			bad.Kill()
			s.startWorker(t, nil)
			s.requireBitGoOnce(t, domain.AllocCompleted, "O-bg-401")
		})
	}
}

// bitgoRecord reads the record of the order's BitGo item from
// paystream_bitgo_requests.
func (s *allocStack) bitgoRecord(t *testing.T, orderID string) allocation.BitGoRecord {
	t.Helper()
	v, ok := getOrder(t, s.ing, orderID)
	require.True(t, ok, orderID)
	var itemID string
	for _, a := range v.Allocations {
		if a.Backend == domain.BackendBitGo {
			itemID = a.ID
		}
	}
	require.NotEmpty(t, itemID, "%s has a BitGo item", orderID)
	kv, err := s.jetStream(t).KeyValue(context.Background(), allocation.BitGoRequestsBucket)
	require.NoError(t, err)
	e, err := kv.Get(context.Background(), events.Token(itemID))
	require.NoError(t, err)
	var rec allocation.BitGoRecord
	require.NoError(t, json.Unmarshal(e.Value(), &rec))
	return rec
}
