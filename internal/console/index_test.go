package console

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// TestRevListAgainstModel runs random inserts (mostly at the end, as the
// watch does, some in the middle), removals and descents against a sorted
// slice.
func TestRevListAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var l revList
	var model []*entry
	next := uint64(1_000_000)
	for step := range 20000 {
		switch op := rng.IntN(10); {
		case op < 5 || len(model) == 0:
			var rev uint64
			if rng.IntN(4) == 0 {
				// A revision below the newest, never taken.
				for {
					rev = uint64(rng.IntN(int(next)))
					if !slices.ContainsFunc(model, func(e *entry) bool { return e.rev == rev }) {
						break
					}
				}
			} else {
				next += uint64(1 + rng.IntN(3))
				rev = next
			}
			e := &entry{rev: rev}
			l.insert(e)
			i, _ := slices.BinarySearchFunc(model, rev, func(e *entry, r uint64) int { return cmpU(e.rev, r) })
			model = slices.Insert(model, i, e)
		case op < 8:
			i := rng.IntN(len(model))
			require.True(t, l.remove(model[i]), "step %d", step)
			model = slices.Delete(model, i, i+1)
		default:
			before := uint64(0)
			if rng.IntN(2) == 0 {
				before = uint64(rng.IntN(int(next + 2)))
			}
			limit := rng.IntN(40)
			var got, want []uint64
			l.descend(before, func(e *entry) bool {
				if len(got) == limit {
					return false
				}
				got = append(got, e.rev)
				return true
			})
			for i := len(model) - 1; i >= 0 && len(want) < limit; i-- {
				if before == 0 || model[i].rev < before {
					want = append(want, model[i].rev)
				}
			}
			require.Equal(t, want, got, "step %d before %d", step, before)
		}
		require.Equal(t, len(model), l.Len())
	}
	require.False(t, l.remove(&entry{rev: next + 100}), "an absent revision is not removed")
	var all []uint64
	l.descend(0, func(e *entry) bool { all = append(all, e.rev); return true })
	require.Len(t, all, len(model))
	require.True(t, slices.IsSortedFunc(all, func(a, b uint64) int { return cmpU(b, a) }))
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func item(id, backend, status string, stuck bool) domain.AllocationItem {
	it := domain.AllocationItem{ID: id, Backend: backend, Status: status, Amount: decimal.RequireFromString("1.5"), TokenID: "ETH_USDT", Destination: "M9000"}
	if stuck {
		at := time.Unix(1_700_000_000, 0)
		it.StuckSince = &at
	}
	return it
}

func TestIndexPagesFiltersAndCounts(t *testing.T) {
	x := NewIndex()
	at := time.Unix(1_700_000_000, 0)
	rev := uint64(0)
	put := func(id, merchant, status string, items ...domain.AllocationItem) {
		t.Helper()
		rev++
		x.Put(OrderFields{OrderID: id, MerchantID: merchant, Status: status, Allocations: items}, rev, at.Add(time.Duration(rev)*time.Second))
	}
	for i := range 10 {
		put(fmt.Sprintf("O-%02d", i), []string{"M1", "M2"}[i%2], "Pending")
	}
	// Changes move an order to the front and between the filtered lists.
	put("O-03", "M2", "Completed", item("a", "cobo", "completed", false), item("b", "cobo", "failed", false), item("c", "bitgo", "pending", true))
	put("O-04", "M1", "Expired")
	x.Put(OrderFields{OrderID: "O-05", MerchantID: "M2", Status: "Processing"}, 3, at) // an old revision: ignored

	p := x.Page(Query{Limit: 4})
	require.Equal(t, 10, p.Total)
	require.Equal(t, []string{"O-04", "O-03", "O-09", "O-08"}, ids(p))
	require.Equal(t, uint64(9), p.Next, "the cursor is the last revision shown")
	p = x.Page(Query{Limit: 4, Before: p.Next})
	require.Equal(t, []string{"O-07", "O-06", "O-05", "O-02"}, ids(p))
	p = x.Page(Query{Limit: 4, Before: p.Next})
	require.Equal(t, []string{"O-01", "O-00"}, ids(p))
	require.Zero(t, p.Next, "the last page has no successor")

	require.Equal(t, []string{"O-03"}, ids(x.Page(Query{Status: "Completed"})))
	require.Equal(t, []string{"O-09", "O-07", "O-05", "O-01"}, ids(x.Page(Query{Merchant: "M2", Status: "Pending"})))
	require.Equal(t, []string{"O-04", "O-08", "O-06", "O-02", "O-00"}, ids(x.Page(Query{Merchant: "M1"})))
	require.Empty(t, x.Page(Query{Merchant: "M9"}).Orders)

	s, ok := x.Get("O-03")
	require.True(t, ok)
	require.Equal(t, AllocSummary{Completed: 1, Failed: 1, Pending: 1, Stuck: 1}, s.Allocations)
	require.Equal(t, at.Add(11*time.Second).UTC(), s.ChangedAt)

	st := x.Stats()
	require.Equal(t, 10, st.Orders)
	require.Equal(t, map[string]int{"Pending": 8, "Completed": 1, "Expired": 1}, st.ByStatus)
	require.Equal(t, 1, st.Allocations["cobo"]["failed"])
	require.Equal(t, 1, st.Allocations["bitgo"]["pending"])
	require.Equal(t, 1, st.Stuck)
	require.Equal(t, []string{"M1", "M2"}, st.Merchants)

	items, orders := x.Attention(10)
	require.Equal(t, 1, orders)
	require.Len(t, items, 2, "the failed and the stuck item")
	require.Equal(t, "b", items[0].ID)
	require.False(t, items[0].Stuck())
	require.True(t, items[1].Stuck())

	// The failure resolved: the counts follow the new state.
	put("O-03", "M2", "Completed", item("a", "cobo", "completed", false))
	st = x.Stats()
	require.Zero(t, st.Allocations["cobo"]["failed"])
	require.Zero(t, st.Stuck)
	_, orders = x.Attention(10)
	require.Zero(t, orders)

	// A deleted order disappears; a reload forgets what it did not see.
	x.Delete("O-04", rev+1)
	require.Equal(t, 9, x.Page(Query{}).Total)
	require.NotContains(t, x.Stats().Merchants, "M0")
	x.BeginLoad()
	x.Put(OrderFields{OrderID: "O-03", MerchantID: "M2", Status: "Completed"}, rev, at)
	x.EndLoad()
	require.True(t, x.Ready())
	require.Equal(t, []string{"O-03"}, ids(x.Page(Query{})))
	require.Equal(t, []string{"M2"}, x.Stats().Merchants, "a merchant without orders is no filter any more")
}

func ids(p Page) []string {
	out := []string{}
	for _, o := range p.Orders {
		out = append(out, o.OrderID)
	}
	return out
}

// fillIndex indexes n orders as the watch would, oldest first: three
// merchants, statuses spread, a few items each.
func fillIndex(x *Index, n int) {
	statuses := []string{"Pending", "Processing", "Completed", "Expired", "Underpaid"}
	merchants := []string{"M1001", "M1002", "M1003"}
	items := []domain.AllocationItem{item("s1", "cobo", "completed", false), item("s2", "bitgo", "completed", false)}
	at := time.Unix(1_700_000_000, 0)
	for i := range n {
		x.Put(OrderFields{OrderID: fmt.Sprintf("O20261122-M%d-%09d", 1001+i%3, i), MerchantID: merchants[i%3], Status: statuses[i%5], Allocations: items},
			uint64(i+1), at.Add(time.Duration(i)*time.Millisecond))
	}
}

// pageCosts measures q's page on each index: the fastest of several
// rounds' mean, rounds interleaved so that a pause of the machine (or of
// the garbage collector) cannot favour one index.
func pageCosts(q Query, xs ...*Index) []time.Duration {
	const rounds, perRound = 9, 1000
	best := make([]time.Duration, len(xs))
	for i := range best {
		best[i] = time.Duration(1 << 62)
	}
	runtime.GC()
	for range rounds {
		for i, x := range xs {
			start := time.Now()
			for range perRound {
				if len(x.Page(q).Orders) == 0 {
					panic("empty page")
				}
			}
			best[i] = min(best[i], time.Since(start)/perRound)
		}
	}
	return best
}

// TestFirstPageCostDoesNotGrowWithOrders is the orders list's scaling
// requirement: in one run, the first page (unfiltered, by status, by
// status and merchant) with a million orders costs at most twice what it
// costs with a thousand. Under the race detector, which multiplies the
// time and memory of every access (a million orders would take 2 GB), it
// checks a hundred thousand.
func TestFirstPageCostDoesNotGrowWithOrders(t *testing.T) {
	if testing.Short() {
		t.Skip("indexes a million orders")
	}
	n := 1_000_000
	if raceEnabled {
		n = 100_000
	}
	small, large := NewIndex(), NewIndex()
	// Building is not what is measured: fewer collections make it faster.
	gc := debug.SetGCPercent(200)
	fillIndex(small, 1_000)
	fillIndex(large, n)
	debug.SetGCPercent(gc)
	for _, q := range []Query{{}, {Status: "Completed"}, {Status: "Expired", Merchant: "M1002"}, {Merchant: "M1003", Limit: MaxPageSize}} {
		c := pageCosts(q, small, large)
		s, l := c[0], c[1]
		ratio := float64(l) / float64(s)
		t.Logf("first page %+v: %s with 1,000 orders, %s with %d: ratio %.2f", q, s, l, n, ratio)
		require.LessOrEqual(t, ratio, 2.0, "query %+v", q)
	}
	// A page deep in the list costs a lookup more, not a walk.
	half := uint64(n / 2)
	mid := large.Page(Query{Limit: 1, Before: half}).Orders[0]
	require.Equal(t, half-1, mid.Revision)
	t.Logf("a page at revision %d of %d: %s", half, n, pageCosts(Query{Before: half}, large)[0])
}

// TestIndexMemoryPerOrder reports what the index holds per order.
func TestIndexMemoryPerOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("indexes 200,000 orders")
	}
	const n = 200_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := NewIndex()
	fillIndex(x, n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("index memory: %.0f bytes an order (ids of 25 bytes, two allocation items each)", per)
	require.Less(t, per, 400.0, "update the figure in Index's doc comment")
	runtime.KeepAlive(x)
}

func BenchmarkFirstPage(b *testing.B) {
	for _, n := range []int{1_000, 1_000_000} {
		x := NewIndex()
		fillIndex(x, n)
		b.Run(fmt.Sprintf("orders=%d", n), func(b *testing.B) {
			for b.Loop() {
				x.Page(Query{Status: "Completed", Merchant: "M1001"})
			}
		})
	}
}
