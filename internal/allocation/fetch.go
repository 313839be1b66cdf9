package allocation

import (
	"context"
	"errors"
	"fmt"
	"net/http"

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
	var apiErr *cobo.APIError
	if errors.As(err, &apiErr) && apiErr.HTTPStatus == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %w", domain.ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	return handlers.SnapshotFromOrder(o), nil
}
