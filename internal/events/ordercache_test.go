package events

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// named is an order whose id carries a value, for the cache's tests.
func named(id string) *domain.Order { return &domain.Order{OrderID: id} }

func TestOrderCacheIsBoundedLeastRecentlyUsed(t *testing.T) {
	c := newOrderCache(3)
	for i := range 3 {
		c.put(fmt.Sprint("o", i), uint64(i+1), named(fmt.Sprint(i)))
	}
	// o0 used last: o1 is now the least recently used.
	_, _, ok := c.get("o0")
	require.True(t, ok)
	c.put("o3", 4, named("3"))
	require.Equal(t, 3, c.len())
	_, _, ok = c.get("o1")
	require.False(t, ok, "the least recently used order is dropped")
	for _, k := range []string{"o0", "o2", "o3"} {
		_, _, ok := c.get(k)
		require.True(t, ok, k)
	}
}

func TestOrderCacheKeepsTheLaterRevision(t *testing.T) {
	c := newOrderCache(10)
	c.put("o", 7, named("seven"))
	// A write of this process that finished later but committed earlier.
	c.put("o", 5, named("five"))
	rev, val, ok := c.get("o")
	require.True(t, ok)
	require.EqualValues(t, 7, rev)
	require.Equal(t, "seven", val.OrderID)

	// A lost race at an earlier revision says nothing of the later one.
	c.forget("o", 6)
	_, _, ok = c.get("o")
	require.True(t, ok)
	c.forget("o", 7)
	_, _, ok = c.get("o")
	require.False(t, ok)
}

// TestOrderCacheConcurrentUse is for -race: any mix of reads, writes and
// forgets from many goroutines keeps the bound and answers only what was
// put, each key's revision with its own value.
func TestOrderCacheConcurrentUse(t *testing.T) {
	c := newOrderCache(64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				key := fmt.Sprint("o", (g*7+i)%100)
				rev := uint64(i + 1)
				switch i % 3 {
				case 0:
					c.put(key, rev, named(fmt.Sprint(key, "@", rev)))
				case 1:
					if r, v, ok := c.get(key); ok && v.OrderID != fmt.Sprint(key, "@", r) {
						t.Errorf("%s at %d has %q", key, r, v.OrderID)
					}
				default:
					c.forget(key, rev)
				}
			}
		})
	}
	wg.Wait()
	require.LessOrEqual(t, c.len(), 64)
	require.Equal(t, len(c.byID), c.lru.Len())
}
