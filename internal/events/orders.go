package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/domain"
)

// OrderStore keeps order state in a JetStream key-value bucket. Writes are
// compare-and-set on the entry's revision.
//
// A writer's store (OpenOrderStore) also remembers, for a bounded number
// of orders, the state it last read or wrote with its revision (Cached),
// so that a writer may try its compare-and-set without reading first. That
// copy may be stale; the compare-and-set at its revision is the check.
type OrderStore struct {
	kv jetstream.KeyValue
	// exp, when set, writes settled orders with the retention's TTL and
	// tells the horizon of an order without state; nil keeps every order
	// for ever, with no horizon.
	exp       *ExpiringKV
	retention Retention
	now       func() time.Time
	// cache, when set, remembers what Get read and Put wrote; nil for
	// readers (NewOrderStore).
	cache *orderCache
}

// ErrNotCached is Cached's answer on a store that remembers nothing
// (NewOrderStore): the caller reads with Get.
var ErrNotCached = errors.New("this order store keeps no cache: read with Get")

// NewOrderStore returns an OrderStore on the orders bucket kv that keeps
// every order for ever: for readers, and for writers of buckets that keep
// no retention.
func NewOrderStore(kv jetstream.KeyValue) *OrderStore {
	return &OrderStore{kv: kv, now: time.Now}
}

// OpenOrderStore returns the OrderStore every writer of order state uses
// (workers, replay -apply, reconciliation by hand) on the orders bucket
// kv, with cfg.Retention: a settled order (domain.Order.Settled) is
// written with a per-key TTL of Keep and rolled up, so it expires Keep
// after its last change, whole; an order in progress never expires. Get
// answers an order without state with a domain.AbsentError carrying the
// horizon its new state gets, once state can have expired.
func OpenOrderStore(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, cfg StreamConfig) (*OrderStore, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Retention.Validate(); err != nil {
		return nil, fmt.Errorf("orders: Retention.%w", err)
	}
	exp, err := OpenExpiringKV(ctx, js, kv, cfg.Retention, cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &OrderStore{kv: kv, exp: exp, retention: cfg.Retention, now: time.Now, cache: newOrderCache(DefaultOrderCacheSize)}, nil
}

// Get returns the order and its revision, or an error wrapping
// domain.ErrNotFound: a *domain.AbsentError, with the horizon its new
// state gets (see domain.Order.Horizon).
func (s *OrderStore) Get(ctx context.Context, orderID string) (*domain.Order, uint64, error) {
	key := OrderKey(orderID)
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		s.forget(key, math.MaxUint64)
		return nil, 0, &domain.AbsentError{OrderID: orderID, Horizon: s.horizon()}
	}
	if err != nil {
		s.forgetAll() // as for Put: the bucket may be gone
		return nil, 0, fmt.Errorf("get order %s: %w", orderID, err)
	}
	var o domain.Order
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return nil, 0, fmt.Errorf("decode order %s at revision %d: %w", orderID, e.Revision(), err)
	}
	if s.cache != nil {
		s.cache.put(key, e.Revision(), o.Clone())
	}
	return &o, e.Revision(), nil
}

// Cached answers as Get would, without asking the server, from the state
// this store last read or wrote of the order: the order and that
// revision, or, for an order it does not remember (never seen, or
// forgotten), a *domain.AbsentError as for an order without state. The
// answer may be stale: another process may have written the order since,
// or created it. Put at the revision it returns (Create for an absent
// order) is the check, and a stale answer only costs that write's
// conflict. A store that remembers nothing (NewOrderStore) answers
// ErrNotCached.
func (s *OrderStore) Cached(orderID string) (*domain.Order, uint64, error) {
	if s.cache == nil {
		return nil, 0, ErrNotCached
	}
	rev, o, ok := s.cache.get(OrderKey(orderID))
	if !ok {
		return nil, 0, &domain.AbsentError{OrderID: orderID, Horizon: s.horizon()}
	}
	// A copy: the caller changes what it gets. Copying the order this
	// process wrote (or decoded) instead of decoding its stored bytes
	// again saves the JSON decode; Clone's tests hold it to a copy that
	// marshals to the same bytes.
	return o.Clone(), rev, nil
}

// horizon is the Horizon of state created now: zero while no order can
// have expired yet (the bucket is younger than the retention), else the
// retention's horizon.
func (s *OrderStore) horizon() time.Time {
	if s.exp == nil {
		return time.Time{}
	}
	now := s.now()
	// An expired key was written Keep before it expired, after the bucket
	// was created; the margin is for the server's clock against ours.
	if created := s.exp.Created(); !created.IsZero() && now.Before(created.Add(s.retention.Keep-s.retention.Margin)) {
		return time.Time{}
	}
	return s.retention.Horizon(now).UTC()
}

// Put writes o if the stored revision is still rev (0: the order must not
// exist yet). A lost race returns an error wrapping domain.ErrConflict.
// A settled order is written to expire (see OpenOrderStore).
func (s *OrderStore) Put(ctx context.Context, o *domain.Order, rev uint64) (uint64, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return 0, fmt.Errorf("encode order %s: %w", o.OrderID, err)
	}
	key := OrderKey(o.OrderID)
	var newRev uint64
	switch {
	case s.exp != nil:
		newRev, err = s.exp.Put(ctx, key, b, rev, o.Settled())
	case rev == 0:
		newRev, err = s.kv.Create(ctx, key, b)
	default:
		newRev, err = s.kv.Update(ctx, key, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		s.forget(key, rev)
		return 0, fmt.Errorf("put order %s at revision %d: %w", o.OrderID, rev, domain.ErrConflict)
	}
	if err != nil {
		// The write may have been stored all the same (a lost reply), or
		// the bucket may be gone and come back (recreated, its revisions
		// counting from 1 again): nothing remembered is known to be the
		// stored state any more.
		s.forgetAll()
		return 0, fmt.Errorf("put order %s: %w", o.OrderID, err)
	}
	if s.cache != nil {
		// A copy: the caller may go on changing o.
		s.cache.put(key, newRev, o.Clone())
	}
	return newRev, nil
}

// Create writes o, an order Cached did not remember, in one round trip if
// its key has no entry at all. Unlike Put at revision 0 it does not look
// for the marker of a deleted or expired order, which costs a read when
// the order exists: a key with any entry, or a lost race, returns an
// error wrapping domain.ErrConflict, and the caller reads with Get (which
// answers such an order as absent) and writes with Put.
func (s *OrderStore) Create(ctx context.Context, o *domain.Order) (uint64, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return 0, fmt.Errorf("encode order %s: %w", o.OrderID, err)
	}
	key := OrderKey(o.OrderID)
	var newRev uint64
	if s.exp != nil {
		newRev, err = s.exp.CreateNew(ctx, key, b, o.Settled())
	} else {
		newRev, err = s.kv.Update(ctx, key, b, 0)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("create order %s: %w", o.OrderID, domain.ErrConflict)
	}
	if err != nil {
		s.forgetAll() // as for Put
		return 0, fmt.Errorf("create order %s: %w", o.OrderID, err)
	}
	if s.cache != nil {
		// A copy: the caller may go on changing o.
		s.cache.put(key, newRev, o.Clone())
	}
	return newRev, nil
}

// forgetAll drops everything the cache remembers.
func (s *OrderStore) forgetAll() {
	if s.cache != nil {
		s.cache.clear()
	}
}

// forget drops what the cache remembers of key at revision rev or before.
func (s *OrderStore) forget(key string, rev uint64) {
	if s.cache != nil {
		s.cache.forget(key, rev)
	}
}
