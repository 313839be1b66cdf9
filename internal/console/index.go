package console

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// Paging limits of the orders list.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// Allocation backends and statuses as the index counts them; anything
// else is counted as "other".
var (
	indexBackends = []string{domain.BackendCobo, domain.BackendBitGo, "other"}
	indexStatuses = []string{domain.AllocPlanned, domain.AllocPending, domain.AllocCompleted, domain.AllocFailed, "other"}
)

const (
	numBackends = 3
	numStatuses = 5
)

// allocCounts counts an order's allocation items by backend and status.
type allocCounts [numBackends][numStatuses]uint16

// entry is one order as the index holds it: what the orders list shows and
// filters on, nothing more (the order page reads the bucket itself).
// Merchants and statuses are numbers standing for the index's names, so an
// entry costs its id and 88 bytes.
type entry struct {
	id string
	// rev is the orders bucket's sequence of the order's last change: it
	// orders the lists, newest first, and is unique.
	rev uint64
	// changed is when the bucket stored that change (Unix nanoseconds).
	changed int64
	// attention holds copies of the items an operator must look at (failed
	// or stuck); nil for almost every order.
	attention *[]domain.AllocationItem
	// merchant and status index Index.names.
	merchant, status name
	// gen is the load of the bucket that last saw the order (see
	// BeginLoad).
	gen   uint32
	stuck uint16
	alloc allocCounts
}

// name is a merchant's or status's number in an Index.
type name uint32

type statusMerchant [2]name

// Index is the console's in-memory index of every order in the orders
// bucket, fed by a watch of the bucket (see watchOrders). It keeps the
// orders sorted by their last change (the bucket revision) in one list
// for all orders and one per status, per merchant and per status and
// merchant, plus the orders with items needing attention, so that a page
// of any filter is a lookup of the list and a walk of the page: O(log n +
// page size), whatever the number of orders. It never reads the bucket
// per request.
//
// Memory: an order costs its entry (96 bytes plus its id), its map slot,
// and a pointer in four lists (TestIndexMemoryPerOrder measures the total,
// about 200 bytes an order: 200 MB for a million orders).
//
// It is safe for concurrent use.
type Index struct {
	mu         sync.RWMutex
	byID       map[string]*entry
	all        revList
	byStatus   map[name]*revList
	byMerchant map[name]*revList
	byBoth     map[statusMerchant]*revList
	attention  revList
	names      []string
	numbers    map[string]name
	alloc      [numBackends][numStatuses]int
	stuck      int
	ready      bool
	lastRev    uint64
	gen        uint32
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		byID:       map[string]*entry{},
		byStatus:   map[name]*revList{},
		byMerchant: map[name]*revList{},
		byBoth:     map[statusMerchant]*revList{},
		numbers:    map[string]name{},
	}
}

// indexedOrder is the part of a stored order the index reads; the rest of
// the JSON is skipped.
type indexedOrder struct {
	OrderID  string             `json:"order_id"`
	Status   domain.OrderStatus `json:"status"`
	Snapshot *struct {
		MerchantID string `json:"merchant_id"`
	} `json:"snapshot"`
	Notice *struct {
		MerchantID string `json:"merchant_id"`
	} `json:"notice"`
	Allocations []domain.AllocationItem `json:"allocations"`
}

// merchant is the order's merchant as domain.Order.View gives it: the
// precise snapshot's, else the notice's.
func (o *indexedOrder) merchant() string {
	if o.Snapshot != nil && o.Snapshot.MerchantID != "" {
		return o.Snapshot.MerchantID
	}
	if o.Notice != nil {
		return o.Notice.MerchantID
	}
	return ""
}

// decodeIndexed reads the indexed fields of a stored order.
func decodeIndexed(value []byte) (indexedOrder, error) {
	var o indexedOrder
	if err := json.Unmarshal(value, &o); err != nil {
		return o, fmt.Errorf("decode order: %w", err)
	}
	return o, nil
}

// OrderFields is what Put records of an order.
type OrderFields struct {
	OrderID     string
	MerchantID  string
	Status      string
	Allocations []domain.AllocationItem
}

// Put records the order's state at bucket revision rev, stored at
// changed. A revision at or below the one the index holds for the order
// is ignored (a watch delivers each change once and in order, so this
// only guards against replays of the watch).
func (x *Index) Put(o OrderFields, rev uint64, changed time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if rev > x.lastRev {
		x.lastRev = rev
	}
	key := events.OrderKey(o.OrderID)
	e := x.byID[key]
	if e != nil {
		e.gen = x.gen
		if rev <= e.rev {
			return
		}
		x.unlink(e)
	} else {
		e = &entry{id: o.OrderID, gen: x.gen}
		x.byID[key] = e
	}
	e.merchant, e.status = x.number(o.MerchantID), x.number(o.Status)
	e.rev, e.changed = rev, changed.UnixNano()
	e.alloc, e.stuck, e.attention = allocCounts{}, 0, nil
	for _, it := range o.Allocations {
		b, s := slices.Index(indexBackends, it.Backend), slices.Index(indexStatuses, it.Status)
		if b < 0 {
			b = numBackends - 1
		}
		if s < 0 {
			s = numStatuses - 1
		}
		if e.alloc[b][s] < ^uint16(0) {
			e.alloc[b][s]++
		}
		if it.StuckSince != nil {
			e.stuck++
		}
		if it.Status == domain.AllocFailed || it.StuckSince != nil {
			if e.attention == nil {
				e.attention = &[]domain.AllocationItem{}
			}
			*e.attention = append(*e.attention, it)
		}
	}
	x.link(e)
}

// Delete forgets the order stored under key (events.OrderKey), deleted
// or purged from the bucket at revision rev.
func (x *Index) Delete(key string, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if rev > x.lastRev {
		x.lastRev = rev
	}
	if e := x.byID[key]; e != nil {
		x.unlink(e)
		delete(x.byID, key)
	}
}

// BeginLoad starts a load of every stored order (a watch's initial
// values), after which EndLoad forgets the orders the load did not see:
// those deleted while no watch ran. The index keeps answering meanwhile.
func (x *Index) BeginLoad() {
	x.mu.Lock()
	x.gen++
	x.mu.Unlock()
}

// EndLoad ends a load (see BeginLoad) and marks the index ready.
func (x *Index) EndLoad() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for key, e := range x.byID {
		if e.gen != x.gen {
			x.unlink(e)
			delete(x.byID, key)
		}
	}
	x.ready = true
}

// Ready reports whether the index holds every order the bucket held when
// its watch started.
func (x *Index) Ready() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.ready
}

// number returns the number of a merchant's or status's name, giving it
// one the first time.
func (x *Index) number(s string) name {
	if n, ok := x.numbers[s]; ok {
		return n
	}
	n := name(len(x.names))
	x.names = append(x.names, s)
	x.numbers[s] = n
	return n
}

func listOf[K comparable](m map[K]*revList, k K) *revList {
	l := m[k]
	if l == nil {
		l = &revList{}
		m[k] = l
	}
	return l
}

func (x *Index) link(e *entry) {
	x.all.insert(e)
	listOf(x.byStatus, e.status).insert(e)
	listOf(x.byMerchant, e.merchant).insert(e)
	listOf(x.byBoth, statusMerchant{e.status, e.merchant}).insert(e)
	if e.attention != nil {
		x.attention.insert(e)
	}
	x.count(e, 1)
}

func (x *Index) unlink(e *entry) {
	x.all.remove(e)
	dropFrom(x.byStatus, e.status, e)
	dropFrom(x.byMerchant, e.merchant, e)
	dropFrom(x.byBoth, statusMerchant{e.status, e.merchant}, e)
	if e.attention != nil {
		x.attention.remove(e)
	}
	x.count(e, -1)
}

// dropFrom removes e from m's list k, and the list once empty, so that a
// status or merchant no order has any more is not offered as a filter.
func dropFrom[K comparable](m map[K]*revList, k K, e *entry) {
	if l := m[k]; l != nil {
		l.remove(e)
		if l.Len() == 0 {
			delete(m, k)
		}
	}
}

func (x *Index) count(e *entry, sign int) {
	for b := range e.alloc {
		for s, n := range e.alloc[b] {
			x.alloc[b][s] += sign * int(n)
		}
	}
	x.stuck += sign * int(e.stuck)
}

// Query selects a page of the orders list.
type Query struct {
	// Status and Merchant, when set, must match.
	Status, Merchant string
	// Before, when set, is the cursor of the page: only orders whose last
	// change has a lower revision (Page.Next of the page before).
	Before uint64
	// Limit is the page size: DefaultPageSize when 0, at most MaxPageSize.
	Limit int
}

// AllocSummary counts an order's allocation items by status.
type AllocSummary struct {
	Planned   int `json:"planned"`
	Pending   int `json:"pending"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	Stuck     int `json:"stuck"`
}

// Total is the number of items.
func (a AllocSummary) Total() int { return a.Planned + a.Pending + a.Completed + a.Failed }

// OrderSummary is one order as the orders list shows it.
type OrderSummary struct {
	OrderID    string `json:"order_id"`
	MerchantID string `json:"merchant_id"`
	Status     string `json:"status"`
	// Revision is the orders bucket's sequence of the last change.
	Revision    uint64       `json:"revision"`
	ChangedAt   time.Time    `json:"changed_at"`
	Allocations AllocSummary `json:"allocations"`
}

// Page is a page of the orders list, most recently changed first.
type Page struct {
	Orders []OrderSummary `json:"orders"`
	// Total is how many orders match the filters.
	Total int `json:"total"`
	// Next is the Before of the next page; 0 on the last page.
	Next uint64 `json:"next,omitempty"`
}

func (x *Index) summary(e *entry) OrderSummary {
	s := OrderSummary{OrderID: e.id, MerchantID: x.names[e.merchant], Status: x.names[e.status], Revision: e.rev, ChangedAt: time.Unix(0, e.changed).UTC(), Allocations: AllocSummary{Stuck: int(e.stuck)}}
	for b := range e.alloc {
		s.Allocations.Planned += int(e.alloc[b][0])
		s.Allocations.Pending += int(e.alloc[b][1])
		s.Allocations.Completed += int(e.alloc[b][2])
		s.Allocations.Failed += int(e.alloc[b][3])
	}
	return s
}

// Page returns the page q selects, most recently changed first, in
// O(log n + q.Limit).
func (x *Index) Page(q Query) Page {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	x.mu.RLock()
	defer x.mu.RUnlock()
	status, knownStatus := x.numbers[q.Status]
	merchant, knownMerchant := x.numbers[q.Merchant]
	var l *revList
	switch {
	case (q.Status != "" && !knownStatus) || (q.Merchant != "" && !knownMerchant):
		// No order ever had it.
	case q.Status != "" && q.Merchant != "":
		l = x.byBoth[statusMerchant{status, merchant}]
	case q.Status != "":
		l = x.byStatus[status]
	case q.Merchant != "":
		l = x.byMerchant[merchant]
	default:
		l = &x.all
	}
	p := Page{Orders: make([]OrderSummary, 0, limit)}
	if l == nil {
		return p
	}
	p.Total = l.Len()
	l.descend(q.Before, func(e *entry) bool {
		if len(p.Orders) == limit {
			// One more exists: the page has a successor.
			p.Next = p.Orders[limit-1].Revision
			return false
		}
		p.Orders = append(p.Orders, x.summary(e))
		return true
	})
	return p
}

// Get returns the summary of one order.
func (x *Index) Get(orderID string) (OrderSummary, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e := x.byID[events.OrderKey(orderID)]
	if e == nil {
		return OrderSummary{}, false
	}
	return x.summary(e), true
}

// AttentionItem is an allocation item an operator must look at: failed,
// or stuck (planned or pending too long), with its order.
type AttentionItem struct {
	domain.AllocationItem
	// OrderChangedAt is when the order last changed.
	OrderChangedAt time.Time `json:"order_changed_at"`
	OrderStatus    string    `json:"order_status"`
	MerchantID     string    `json:"merchant_id"`
}

// Stuck reports whether the item is stuck rather than failed.
func (a AttentionItem) Stuck() bool { return a.StuckSince != nil && a.Status != domain.AllocFailed }

// Attention returns up to limit items needing attention, those of the
// most recently changed orders first, and how many orders have any.
func (x *Index) Attention(limit int) ([]AttentionItem, int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []AttentionItem
	x.attention.descend(0, func(e *entry) bool {
		for _, it := range *e.attention {
			if len(out) == limit {
				return false
			}
			out = append(out, AttentionItem{AllocationItem: it, OrderChangedAt: time.Unix(0, e.changed).UTC(), OrderStatus: x.names[e.status], MerchantID: x.names[e.merchant]})
		}
		return len(out) < limit
	})
	return out, x.attention.Len()
}

// IndexStats is what the overview shows of the index.
type IndexStats struct {
	Ready    bool           `json:"ready"`
	Orders   int            `json:"orders"`
	ByStatus map[string]int `json:"by_status"`
	// Allocations counts items by backend, then status.
	Allocations map[string]map[string]int `json:"allocations"`
	// Stuck counts items stuck planned or pending.
	Stuck int `json:"stuck"`
	// Merchants are the known merchants of the indexed orders, sorted.
	Merchants []string `json:"merchants"`
	// Revision is the latest bucket revision seen.
	Revision uint64 `json:"revision"`
}

// Stats summarises the index. It costs the number of statuses and
// merchants, not of orders.
func (x *Index) Stats() IndexStats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	st := IndexStats{Ready: x.ready, Orders: x.all.Len(), ByStatus: map[string]int{}, Allocations: map[string]map[string]int{}, Stuck: x.stuck, Revision: x.lastRev}
	for s, l := range x.byStatus {
		st.ByStatus[x.names[s]] = l.Len()
	}
	for b, name := range indexBackends {
		m := map[string]int{}
		any := false
		for s, status := range indexStatuses {
			m[status] = x.alloc[b][s]
			any = any || x.alloc[b][s] > 0
		}
		if any || b < 2 {
			st.Allocations[name] = m
		}
	}
	for m := range x.byMerchant {
		// Orders whose merchant is not known yet are listed, but "" is
		// no merchant to filter by.
		if x.names[m] != "" {
			st.Merchants = append(st.Merchants, x.names[m])
		}
	}
	slices.Sort(st.Merchants)
	return st
}
