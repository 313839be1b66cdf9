package e2e_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// An item reads failed only when Cobo certainly did not make it; every
// other answer is reconciled (request_id lookup), waits, or alerts.

const batchRoute = "/v2/payments/batch_allocations"

// TestAllocationsCompleteWithoutStatus runs against a Cobo answering in the
// seeds' shapes: no status on batches or items. A batch Cobo created
// completes its ledger-only items at once.
func TestAllocationsCompleteWithoutStatus(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{Shape: cobosim.ShapeSeed})
	s.startWorker(t, nil)
	ids := []string{"O-seed-1", "O-seed-2"}
	sendHistories(t, s, ids...)
	s.requireAllocatedOnce(t, ids...)
}

// TestLostAnswerThen401IsCompleted: the first send of a batch reaches Cobo
// and its answer is lost; the retry gets a 401. The batch exists, so the
// lookup by request_id finds it and the items are completed, not failed.
func TestLostAnswerThen401IsCompleted(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchRoute, Kind: cobosim.FaultLoseResponse})
	s.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchRoute, Kind: cobosim.FaultUnauthorized})
	s.startWorker(t, nil)
	sendHistories(t, s, "O-lost-401")
	s.requireNoneFailed(t, 30*time.Second, "O-lost-401")
	s.requireAllocatedOnce(t, "O-lost-401")
	require.Equal(t, 2, s.sim.State().FaultsApplied, "the lost answer and the 401 were both served")
}

// TestUnauthorizedSendsWaitForTheKey: Cobo refuses paystream's key on
// every batch request, sends and lookups alike. The items wait (planned,
// never failed), the refusals are counted, and once the key works again
// the same batch is sent and its items complete, each exactly once.
func TestUnauthorizedSendsWaitForTheKey(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.sim.InjectFault(cobosim.Fault{PathPrefix: batchRoute, Kind: cobosim.FaultUnauthorized, Count: 1 << 30})
	w := s.startWorker(t, nil)
	sendHistories(t, s, "O-key")
	testutil.WaitFor(t, 20*time.Second, "several refused sends", func() bool { return s.sim.State().FaultsApplied >= 4 })
	v, ok := getOrder(t, s.ing, "O-key")
	require.True(t, ok)
	require.NotEmpty(t, v.Allocations)
	for _, a := range v.Allocations {
		require.Equal(t, domain.AllocPlanned, a.Status, "%s waits for the key: %+v", a.ID, a)
	}
	require.Empty(t, s.sim.Batches())
	testutil.WaitFor(t, 10*time.Second, "credential errors counted", func() bool {
		return metricValue(t, w, "paystream_cobo_credential_errors_total") > 0 &&
			metricValue(t, w, `paystream_allocation_batches_waiting{reason="credentials"}`) > 0
	})

	s.sim.ClearFaults() // the operator registered the key
	s.requireAllocatedOnce(t, "O-key")
	testutil.WaitFor(t, 10*time.Second, "no batch waiting", func() bool {
		return metricValue(t, w, `paystream_allocation_batches_waiting{reason="credentials"}`) == 0
	})
}

// TestPricingPlan30001IsNotResentForever: Cobo answers every batch 30001,
// which may mean "request_id already used" but here is "pricing plan does
// not support this feature". The lookup finds no batch, so it was a
// rejection: the batch is split down to single items, which end failed
// with Cobo's answer, and nothing is sent again after that.
func TestPricingPlan30001IsNotResentForever(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{DuplicateCode: 30001})
	s.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchRoute, Kind: cobosim.FaultPricingPlan, Count: 1 << 30})
	w := s.startWorker(t, nil)
	sendHistories(t, s, "O-30001")
	waitItemsFinal(t, s.ing, "O-30001", 3, 30*time.Second)
	v, _ := getOrder(t, s.ing, "O-30001")
	for _, a := range v.Allocations {
		require.Equal(t, domain.AllocFailed, a.Status, a.ID)
		require.Contains(t, a.Reason, "30001", a.ID)
		require.Contains(t, a.Reason, cobosim.PricingPlanMessage, a.ID)
	}
	require.Empty(t, s.sim.Batches())
	require.Positive(t, metricValue(t, w, `paystream_cobo_api_seconds_count{endpoint="list_batch_allocations"}`), "the batches were looked up before failing")
	sent := s.sim.State().FaultsApplied
	// A batch of n items becomes at most 2n-1 batches: each split halves
	// one. (A batch resent under its own request_id could add a send.)
	require.LessOrEqual(t, sent, 2*(2*3-1))
	time.Sleep(2 * time.Second) // many recovery rounds
	require.Equal(t, sent, s.sim.State().FaultsApplied, "nothing is sent again")
}

// TestSelfTransferFailsAlone puts a transfer from M9000 to itself in one
// batch with other orders' valid items. Cobo rejects the batch with a 400;
// the halves are sent under new request_ids until the self-transfer is
// alone: it ends failed with Cobo's error and every other item completes,
// exactly once.
func TestSelfTransferFailsAlone(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	// The first worker creates the stream, buckets and consumers; the
	// intents are then published while no batcher runs, so the next
	// worker's batcher pulls them all into one batch.
	s.startWorker(t, nil).Kill()
	js := s.jetStream(t)
	good := s.plantPlannedOrder(t, js, "O-good")
	self := plantOrder(t, js, "O-M9000", "M9000",
		domain.AllocationItem{ID: "O-M9000:split:%2A:M9000", Destination: "M9000", Amount: decimal.RequireFromString("5"), Description: "referral O-M9000"},
		domain.AllocationItem{ID: "O-M9000:split:M9000:developer", Destination: "developer", Amount: decimal.RequireFromString("10"), Description: "platform commission O-M9000"})
	outbox := allocation.NewOutbox(js)
	for _, o := range []*domain.Order{good, self} {
		_, err := outbox.Publish(context.Background(), o)
		require.NoError(t, err)
	}
	w := s.startWorker(t, nil)

	s.requireNoneFailed(t, 30*time.Second, "O-good")
	testutil.WaitFor(t, 20*time.Second, "O-M9000's items final", func() bool {
		v, _ := getOrder(t, s.ing, "O-M9000")
		return v.Allocations[0].Final() && v.Allocations[1].Final()
	})
	v, _ := getOrder(t, s.ing, "O-M9000")
	selfItem, commission := v.Allocations[0], v.Allocations[1]
	require.Equal(t, domain.AllocFailed, selfItem.Status)
	require.Contains(t, selfItem.Reason, "error_code 2006")
	require.Contains(t, selfItem.Reason, "source_account and destination_account are the same")
	require.Equal(t, domain.AllocCompleted, commission.Status)
	require.NotEqual(t, selfItem.RequestID, commission.RequestID, "the self-transfer was split from the others")

	// Every other item of the batch is at Cobo exactly once.
	want := expectedItems("O-good")
	want["platform commission O-M9000"] = "10"
	got := map[string]int{}
	for _, it := range s.sim.Items() {
		require.NotEqual(t, it.SourceAccount, it.DestinationAccount, "no self-transfer at Cobo")
		amount, ok := want[it.Description]
		require.True(t, ok, "unexpected item %+v", it)
		require.True(t, decimal.RequireFromString(amount).Equal(decimal.RequireFromString(it.Amount)), it.Description)
		got[it.Description]++
	}
	for desc := range want {
		require.Equal(t, 1, got[desc], "item %q must exist exactly once at Cobo", desc)
	}
	require.Positive(t, metricValue(t, w, "paystream_allocation_batch_splits_total"))
	require.Equal(t, float64(1), metricValue(t, w, `paystream_allocation_items_refused_total{backend="cobo"}`))
}

// plantOrder writes a completed order of merchant with the given planned
// Cobo items (source merchant, ETH_USDT), as a worker's commit would.
func plantOrder(t *testing.T, js jetstream.JetStream, orderID, merchant string, items ...domain.AllocationItem) *domain.Order {
	t.Helper()
	o := &domain.Order{OrderID: orderID, Status: domain.StatusCompleted, SplitsPlanned: true,
		Snapshot: &domain.Snapshot{Status: domain.StatusCompleted, MerchantID: merchant, PayableCurrency: "ETH_USDT", UpdatedTimestamp: 200}}
	for _, it := range items {
		it.Kind, it.OrderID, it.Backend, it.TokenID, it.Source, it.Status = domain.KindSplit, orderID, domain.BackendCobo, "ETH_USDT", merchant, domain.AllocPlanned
		o.Allocations = append(o.Allocations, it)
	}
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, events.OrdersBucket)
	require.NoError(t, err)
	_, err = events.NewOrderStore(kv).Put(ctx, o, 0)
	require.NoError(t, err)
	return o
}

// requireNoneFailed fails as soon as an item of the orders reads failed,
// and returns once every item of each reads completed.
func (s *allocStack) requireNoneFailed(t *testing.T, timeout time.Duration, orderIDs ...string) {
	t.Helper()
	for _, id := range orderIDs {
		testutil.WaitFor(t, timeout, "allocations of "+id, func() bool {
			v, ok := getOrder(t, s.ing, id)
			if !ok || len(v.Allocations) == 0 {
				return false
			}
			done := true
			for _, a := range v.Allocations {
				require.NotEqual(t, domain.AllocFailed, a.Status, "%s: %s", a.ID, a.Reason)
				done = done && a.Status == domain.AllocCompleted
			}
			return done
		})
	}
}
