package allocation

import (
	"context"
	"errors"
	"fmt"

	"github.com/paystream/paystream/internal/domain"
)

// recordAttempts bounds the compare-and-set retries of one outcome write;
// each conflict means another writer changed the order meanwhile.
const recordAttempts = 50

// updateItems writes outcomes onto order orderID's allocation items with
// compare-and-set. change is called for each item still not final and says
// whether it changed it; the order is written only when one did, and the
// whole read-change-write is redone on a conflict. It returns the items as
// written, none when nothing needed changing (an outcome recorded before,
// or items the order no longer has).
func updateItems(ctx context.Context, orders OrderRepo, orderID string, change func(cur *domain.AllocationItem) bool) ([]domain.AllocationItem, error) {
	for range recordAttempts {
		o, rev, err := orders.Get(ctx, orderID)
		if err != nil {
			return nil, fmt.Errorf("load order %s: %w", orderID, err)
		}
		var changed []domain.AllocationItem
		for i := range o.Allocations {
			cur := &o.Allocations[i]
			if !cur.Final() && change(cur) {
				changed = append(changed, *cur)
			}
		}
		if len(changed) == 0 {
			return nil, nil
		}
		if _, err := orders.Put(ctx, o, rev); err != nil {
			if errors.Is(err, domain.ErrConflict) {
				continue
			}
			return nil, fmt.Errorf("record allocations on order %s: %w", orderID, err)
		}
		return changed, nil
	}
	return nil, fmt.Errorf("record allocations on order %s: %w", orderID, domain.ErrConflict)
}
