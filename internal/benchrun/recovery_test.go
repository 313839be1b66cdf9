package benchrun

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// entry is an orders-bucket entry as the watch delivers it.
type entry struct {
	jetstream.KeyValueEntry
	key   string
	value []byte
	op    jetstream.KeyValueOp
}

func (e entry) Key() string                     { return e.key }
func (e entry) Value() []byte                   { return e.value }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }

func put(t *testing.T, o domain.Order) entry {
	t.Helper()
	b, err := json.Marshal(o)
	require.NoError(t, err)
	return entry{key: o.OrderID, value: b, op: jetstream.KeyValuePut}
}

func TestOrderWatch(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	item := func(backend, status, provider string) domain.AllocationItem {
		return domain.AllocationItem{Backend: backend, Status: status, ProviderID: provider}
	}
	w := orderWatch{}
	// Completed, one item still planned: not settled.
	w.apply(put(t, domain.Order{OrderID: "A", Status: domain.StatusCompleted,
		Allocations: []domain.AllocationItem{item(domain.BackendCobo, domain.AllocPlanned, "")}}), t0)
	// Not final: not settled, whatever its items.
	w.apply(put(t, domain.Order{OrderID: "B", Status: domain.StatusPending}), t0)
	require.Equal(t, 0, w.settled())

	// A's item completes at t0+1s; a later write keeps that moment.
	done := domain.Order{OrderID: "A", Status: domain.StatusCompleted, Allocations: []domain.AllocationItem{
		item(domain.BackendCobo, domain.AllocCompleted, "batch-1"),
		item(domain.BackendBitGo, domain.AllocCompleted, "alloc-1"),
		item(domain.BackendCobo, domain.AllocFailed, "batch-1"), // failed at Cobo: Cobo holds it
		item(domain.BackendBitGo, domain.AllocFailed, ""),       // refused: held by nobody
	}}
	w.apply(put(t, done), t0.Add(time.Second))
	w.apply(put(t, done), t0.Add(2*time.Second))
	require.Equal(t, 1, w.settled())
	require.Equal(t, t0.Add(time.Second), w.lastSettled())

	// B expires at t0+3s with nothing to allocate: the last to settle.
	w.apply(put(t, domain.Order{OrderID: "B", Status: domain.StatusExpired}), t0.Add(3*time.Second))
	require.Equal(t, 2, w.settled())
	require.Equal(t, t0.Add(3*time.Second), w.lastSettled())
	items, failed, cobo, bitgo := w.items()
	require.Equal(t, []int{4, 2, 2, 1}, []int{items, failed, cobo, bitgo})

	// A late payment plans a new item: A is in flight again.
	late := done
	late.Allocations = append(append([]domain.AllocationItem(nil), done.Allocations...), item(domain.BackendCobo, domain.AllocPlanned, ""))
	w.apply(put(t, late), t0.Add(4*time.Second))
	require.Equal(t, 1, w.settled())

	// A deleted key leaves the count.
	w.apply(entry{key: "B", op: jetstream.KeyValueDelete}, t0.Add(5*time.Second))
	require.Len(t, w, 1)
}

func TestRecoveryMarkdown(t *testing.T) {
	r := RecoveryResult{Orders: 400, Rate: 40, KilledAfter: 7.5, Settled: true, Recovered: 12.3, Redelivered: true, FirstRedelivery: 5.1,
		LoadEnded: true, LoadEnd: 2.5, Items: 10, CoboHeld: 7, BitGoHeld: 3, CoboItems: 7, BitGoAllocations: 3}
	md := r.markdown()
	require.Contains(t, md, "| kill → last affected order final and allocated | **12.3 s** (target ≤ 15 s) ✔ |")
	require.Contains(t, md, "| 5.1 s |")
	require.Contains(t, md, "✔ 7 items at Cobo, 3 allocations at BitGo")
	require.NotContains(t, md, "Problem")

	r.Recovered = 60.3
	require.Contains(t, r.markdown(), "**60.3 s** (target ≤ 15 s) ✘")

	r.Settled, r.Redelivered, r.CoboItems = false, false, 8
	r.Problem = "something"
	md = r.markdown()
	require.Contains(t, md, "**not within 3 min**")
	require.Contains(t, md, "held handled again (redelivered to the survivor) | — |")
	require.Contains(t, md, "✘ 8 items at Cobo and 3 allocations at BitGo for 7 and 3 recorded on the orders")
	require.True(t, strings.HasSuffix(md, "**Problem:** something.\n"))
}
