package replay_test

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/testutil"
)

func TestApplyNeedsTheAllocationDecision(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	_, err := replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, Out: io.Discard})
	require.ErrorContains(t, err, "Apply needs Allocation")
	require.ErrorContains(t, err, "NoAllocations")

	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, NoAllocations: true, Allocation: &apply.Allocation{}, Out: io.Discard})
	require.ErrorContains(t, err, "contradict")

	// Applying re-verifies every event, as the workers do.
	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, NoAllocations: true, Out: io.Discard})
	require.ErrorContains(t, err, "Apply: Verifier is required")
	v := testutil.NewSigner(t).Verifier(t)

	// The fleet's rules need the intent stream a worker with rules made.
	rules, err := allocation.ParseRules([]byte(testutil.Rules))
	require.NoError(t, err)
	_, err = events.EnsureEventStream(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	api := newAPISigner(t)
	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, Verifier: v, Allocation: &apply.Allocation{}, Out: io.Discard})
	require.ErrorContains(t, err, "Apply: Allocation.Rules is required")
	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, Verifier: v, Allocation: &apply.Allocation{Rules: rules}, Out: io.Discard})
	require.ErrorContains(t, err, allocation.IntentStream, "the intent stream is looked for first")
	err = allocation.EnsureResources(context.Background(), js, events.StreamConfig{}, allocation.DefaultIntentAck)
	require.NoError(t, err)
	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, Verifier: v, Allocation: &apply.Allocation{Rules: rules}, Out: io.Discard})
	require.ErrorContains(t, err, "Allocation.Cobo: cobo client config: Signer is required")
	_, err = replay.Replay(context.Background(), replay.Config{JetStream: js, Apply: true, Verifier: v, Allocation: &apply.Allocation{Rules: rules, Cobo: cobo.ClientConfig{Signer: api}}, Out: io.Discard})
	require.NoError(t, err)
}

func TestApplyChangesNothingOnCurrentOrdersAndRebuildsAFreshBucket(t *testing.T) {
	s := newStack(t)
	stop := s.startWorker(t)
	ids := []string{"O-ap-1", "O-ap-2"}
	for _, id := range ids {
		s.postHistory(t, id)
	}
	for _, id := range ids {
		testutil.WaitFor(t, 20*time.Second, id+" complete", func() bool { return s.orderComplete(t, id) })
	}
	s.waitWorkersIdle(t)
	want := map[string][]byte{}
	revs := map[string]uint64{}
	for _, id := range ids {
		o, rev, ok := s.order(t, id)
		require.True(t, ok)
		want[id], revs[id] = mustJSON(t, o), rev
	}

	// Current state: nothing to do.
	lines, sum, err := s.runReplay(t, replay.Config{Apply: true, NoAllocations: true})
	require.NoError(t, err)
	require.Len(t, lines, 10)
	require.Equal(t, replay.Summary{Events: 10, Verified: 10, Unchanged: 10}, sum)
	for _, l := range lines {
		require.Equal(t, map[string]any{"result": "unchanged"}, l.obj(t, "applied"), string(l.raw))
	}
	for _, id := range ids {
		_, rev, _ := s.order(t, id)
		require.Equal(t, revs[id], rev, "no write to %s", id)
	}

	// A lost bucket: applying every event rebuilds what the workers built.
	stop()
	require.NoError(t, s.js.DeleteKeyValue(context.Background(), events.OrdersBucket))
	lines, sum, err = s.runReplay(t, replay.Config{Apply: true, NoAllocations: true})
	require.NoError(t, err)
	require.Equal(t, 10, sum.Applied)
	for _, id := range ids {
		o, _, ok := s.order(t, id)
		require.True(t, ok)
		require.JSONEq(t, string(want[id]), string(mustJSON(t, o)), id)
	}
	byEvent := map[string]map[string]any{}
	for _, l := range lines {
		byEvent[l.str(t, "event_id")] = l.obj(t, "applied")
	}
	require.Equal(t, map[string]any{"result": "applied", "status_to": "Pending"}, byEvent["O-ap-1-pending"])
	require.Equal(t, map[string]any{"result": "applied", "status_from": "Pending", "status_to": "Processing"}, byEvent["O-ap-1-txc"])
	require.Equal(t, map[string]any{"result": "applied", "status_from": "Processing", "status_to": "Completed", "first_completed": true}, byEvent["O-ap-1-completed"])
	require.Equal(t, map[string]any{"result": "applied", "late_recorded": []any{"O-ap-1-tx2"}}, byEvent["O-ap-1-late"])

	// And again: nothing changes.
	_, sum, err = s.runReplay(t, replay.Config{Apply: true, NoAllocations: true})
	require.NoError(t, err)
	require.Equal(t, replay.Summary{Events: 10, Verified: 10, Unchanged: 10}, sum)
}

func TestApplyWithRulesNeverAllocatesTwice(t *testing.T) {
	s := newStack(t).withAllocations(t)
	s.registerOrder("O-al")
	stop := s.startWorker(t)
	s.postHistory(t, "O-al")
	s.waitAllocated(t, "O-al")
	s.waitWorkersIdle(t)
	intents, claims, items := s.allocationCounts(t)
	require.Equal(t, uint64(3), intents)
	require.Equal(t, 3, claims)
	require.Equal(t, 3, items)
	_, rev, _ := s.order(t, "O-al")

	// Re-applied with the workers' rules while they run: nothing changes,
	// nothing is planned or published.
	lines, sum, err := s.runReplay(t, replay.Config{Apply: true, Allocation: s.allocationConfig().Plan()})
	require.NoError(t, err)
	require.Equal(t, replay.Summary{Events: 5, Verified: 5, Unchanged: 5}, sum)
	for _, l := range lines {
		require.NotContains(t, l.obj(t, "applied"), "planned")
	}
	_, rev2, _ := s.order(t, "O-al")
	require.Equal(t, rev, rev2)
	i2, c2, it2 := s.allocationCounts(t)
	require.Equal(t, []any{intents, claims, items}, []any{i2, c2, it2})

	// Even with the order state lost, the items planned again keep their
	// ids: the intent stream stores no second intent and no item gets a
	// second claim.
	stop()
	require.NoError(t, s.js.DeleteKeyValue(context.Background(), events.OrdersBucket))
	lines, _, err = s.runReplay(t, replay.Config{Apply: true, Allocation: s.allocationConfig().Plan()})
	require.NoError(t, err)
	planned := map[string]int{}
	for _, l := range lines {
		if p, ok := l.obj(t, "applied")["planned"].([]any); ok {
			for _, id := range p {
				planned[id.(string)]++
			}
		}
	}
	require.Len(t, planned, 3)
	for id, n := range planned {
		require.Equal(t, 1, n, "item %s planned once", id)
	}
	i3, c3, it3 := s.allocationCounts(t)
	require.Equal(t, []any{intents, claims, items}, []any{i3, c3, it3})
	o, _, ok := s.order(t, "O-al")
	require.True(t, ok)
	require.Equal(t, domain.StatusCompleted, o.Status)
	require.True(t, o.SplitsPlanned)
	require.Len(t, o.Allocations, 3)
}

// waitAllocated waits until the order has the three items testutil.Rules plan
// for a history, all completed.
func (s *stack) waitAllocated(t *testing.T, orderID string) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, "allocations of "+orderID, func() bool {
		o, _, ok := s.order(t, orderID)
		return ok && len(o.Allocations) == 3 &&
			!slices.ContainsFunc(o.Allocations, func(a domain.AllocationItem) bool { return a.Status != domain.AllocCompleted })
	})
}

// allocationCounts returns the intents stored, the items claimed and the
// items Cobo holds.
func (s *stack) allocationCounts(t *testing.T) (uint64, int, int) {
	t.Helper()
	intents := s.streamInfo(t, allocation.IntentStream).State.Msgs
	kv, err := s.js.KeyValue(context.Background(), allocation.ClaimsBucket)
	require.NoError(t, err)
	lister, err := kv.ListKeys(context.Background())
	require.NoError(t, err)
	claims := 0
	for range lister.Keys() {
		claims++
	}
	return intents, claims, len(s.alloc.sim.Items())
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// TestApplyWithReorderedRulesPlansNothingTwice: the rules file is
// reordered, the order state is lost, and replay -apply rebuilds it with
// the new file. Item ids come from what identifies a split, not its place
// in the file, so the rebuilt items are the ones already claimed and sent:
// no second intent, no second claim, nothing sent twice, also once a
// worker runs with the reordered file.
func TestApplyWithReorderedRulesPlansNothingTwice(t *testing.T) {
	s := newStack(t).withAllocations(t)
	s.registerOrder("O-reorder")
	stop := s.startWorker(t)
	s.postHistory(t, "O-reorder")
	s.waitAllocated(t, "O-reorder")
	s.waitWorkersIdle(t)
	before, _, _ := s.order(t, "O-reorder")
	intents, claims, items := s.allocationCounts(t)
	require.Equal(t, []any{uint64(3), 3, 3}, []any{intents, claims, items})
	stop()

	reordered, err := allocation.ParseRules([]byte(`{"splits": [
	   {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"},
	   {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"}],
	 "late_payments": "credit_merchant"}`))
	require.NoError(t, err)
	s.alloc.rules = reordered
	require.NoError(t, s.js.DeleteKeyValue(context.Background(), events.OrdersBucket))
	_, _, err = s.runReplay(t, replay.Config{Apply: true, Allocation: s.allocationConfig().Plan()})
	require.NoError(t, err)
	after, _, ok := s.order(t, "O-reorder")
	require.True(t, ok)
	ids := func(o *domain.Order) []string {
		var out []string
		for _, a := range o.Allocations {
			out = append(out, a.ID)
		}
		return out
	}
	require.Equal(t, ids(before), ids(after), "the rebuilt items are the ones already sent")

	s.startWorker(t)
	s.waitWorkersIdle(t)
	i2, c2, it2 := s.allocationCounts(t)
	require.Equal(t, []any{intents, claims, items}, []any{i2, c2, it2}, "nothing published, claimed or sent twice")
}
