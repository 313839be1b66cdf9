package events

import (
	"container/list"
	"sync"

	"github.com/paystream/paystream/internal/domain"
)

// DefaultOrderCacheSize is how many orders a writer's OrderStore remembers
// (OpenOrderStore): a few MiB of orders, many times what one worker has in
// flight and buffered (ConsumerConfig.Concurrency and PullMax).
const DefaultOrderCacheSize = 4096

// orderCache remembers, for a bounded number of orders, the state this
// process last read or wrote and its revision: a least-recently-used
// list, safe for concurrent use. What it answers may be stale (another
// process may have written since); the compare-and-set at the remembered
// revision is what tells, never the cache.
type orderCache struct {
	mu  sync.Mutex
	max int
	// lru holds *cachedOrder, most recently used first.
	lru  *list.List
	byID map[string]*list.Element
}

type cachedOrder struct {
	key string
	rev uint64
	// order is the order at rev; never modified once stored (the store
	// puts and hands out copies).
	order *domain.Order
}

func newOrderCache(max int) *orderCache {
	return &orderCache{max: max, lru: list.New(), byID: make(map[string]*list.Element, max)}
}

// get returns the remembered revision and order of key. The order is
// shared: the caller must not modify it.
func (c *orderCache) get(key string) (rev uint64, order *domain.Order, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[key]
	if !ok {
		return 0, nil, false
	}
	c.lru.MoveToFront(e)
	co := e.Value.(*cachedOrder)
	return co.rev, co.order, true
}

// put remembers order, which nobody may modify afterwards, as key's state
// at rev, unless a later revision is
// remembered already: two goroutines of this process writing the same
// order may finish in either order, and revisions only grow.
func (c *orderCache) put(key string, rev uint64, order *domain.Order) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[key]; ok {
		co := e.Value.(*cachedOrder)
		if rev >= co.rev {
			co.rev, co.order = rev, order
		}
		c.lru.MoveToFront(e)
		return
	}
	c.byID[key] = c.lru.PushFront(&cachedOrder{key: key, rev: rev, order: order})
	for c.lru.Len() > c.max {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.byID, oldest.Value.(*cachedOrder).key)
	}
}

// forget drops key if what is remembered of it is not later than rev: a
// write at rev lost the race, so that state is stale.
func (c *orderCache) forget(key string, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[key]; ok && e.Value.(*cachedOrder).rev <= rev {
		c.lru.Remove(e)
		delete(c.byID, key)
	}
}

// clear forgets every order.
func (c *orderCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Init()
	clear(c.byID)
}

// len is how many orders are remembered.
func (c *orderCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
