package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/domain"
)

// OrderStore keeps order state in a JetStream key-value bucket. Writes are
// compare-and-set on the entry's revision.
type OrderStore struct {
	kv jetstream.KeyValue
	// exp, when set, writes settled orders with the retention's TTL and
	// tells the horizon of an order without state; nil keeps every order
	// for ever, with no horizon.
	exp       *ExpiringKV
	retention Retention
	now       func() time.Time
}

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
	return &OrderStore{kv: kv, exp: exp, retention: cfg.Retention, now: time.Now}, nil
}

// Get returns the order and its revision, or an error wrapping
// domain.ErrNotFound: a *domain.AbsentError, with the horizon its new
// state gets (see domain.Order.Horizon).
func (s *OrderStore) Get(ctx context.Context, orderID string) (*domain.Order, uint64, error) {
	e, err := s.kv.Get(ctx, OrderKey(orderID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, &domain.AbsentError{OrderID: orderID, Horizon: s.horizon()}
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get order %s: %w", orderID, err)
	}
	var o domain.Order
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return nil, 0, fmt.Errorf("decode order %s at revision %d: %w", orderID, e.Revision(), err)
	}
	return &o, e.Revision(), nil
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
		return 0, fmt.Errorf("put order %s at revision %d: %w", o.OrderID, rev, domain.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("put order %s: %w", o.OrderID, err)
	}
	return newRev, nil
}
