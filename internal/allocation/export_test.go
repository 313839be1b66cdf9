package allocation

import (
	"context"

	"github.com/paystream/paystream/internal/domain"
)

// StoredForTest returns the item's record as a sender reads it.
func (s *BitGoSender) StoredForTest(ctx context.Context, itemID string) (*BitGoRecord, uint64, error) {
	return s.stored(ctx, itemID)
}

// ReconcileForTest runs one lookup of an unclear record, as a delivery
// does before sending anything.
func (s *BitGoSender) ReconcileForTest(ctx context.Context, cur domain.AllocationItem, rec *BitGoRecord, rev uint64) (uint64, error) {
	return s.reconcile(ctx, ctx, cur, rec, rev, s.cfg.Logger)
}
