package allocation

import (
	"context"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/handlers"
)

// OrderGetter reads a pay-in order from Cobo.
type OrderGetter interface {
	GetOrder(ctx context.Context, orderID string) (cobo.OrderData, error)
}

// CoboOrders fetches orders paystream never saw from Cobo's order API.
type CoboOrders struct {
	API OrderGetter
}

// FetchOrder implements handlers.OrderFetcher.
func (c CoboOrders) FetchOrder(ctx context.Context, orderID string) (*domain.Snapshot, error) {
	o, err := c.API.GetOrder(ctx, orderID)
	if err != nil {
		return nil, err
	}
	return handlers.SnapshotFromOrder(o), nil
}
