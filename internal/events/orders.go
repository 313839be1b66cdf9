package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/domain"
)

// OrderStore keeps order state in a JetStream key-value bucket. Writes are
// compare-and-set on the entry's revision.
type OrderStore struct {
	kv jetstream.KeyValue
}

// NewOrderStore returns an OrderStore on the orders bucket kv.
func NewOrderStore(kv jetstream.KeyValue) *OrderStore {
	return &OrderStore{kv: kv}
}

// Get returns the order and its revision, or an error wrapping
// domain.ErrNotFound.
func (s *OrderStore) Get(ctx context.Context, orderID string) (*domain.Order, uint64, error) {
	e, err := s.kv.Get(ctx, OrderKey(orderID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("order %s: %w", orderID, domain.ErrNotFound)
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

// Put writes o if the stored revision is still rev (0: the order must not
// exist yet). A lost race returns an error wrapping domain.ErrConflict.
func (s *OrderStore) Put(ctx context.Context, o *domain.Order, rev uint64) (uint64, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return 0, fmt.Errorf("encode order %s: %w", o.OrderID, err)
	}
	key := OrderKey(o.OrderID)
	var newRev uint64
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, key, b)
	} else {
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
