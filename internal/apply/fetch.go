package apply

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/handlers"
)

// orderGetter reads a pay-in order from Cobo (cobo.Client).
type orderGetter interface {
	GetOrder(ctx context.Context, orderID string) (cobo.OrderData, error)
}

// coboOrders confirms orders with Cobo's order API
// (GET /payments/orders/{order_id}), signed with paystream's own API key.
type coboOrders struct {
	api orderGetter
}

var _ handlers.OrderFetcher = coboOrders{}

// FetchOrder implements handlers.OrderFetcher: a 404 wraps
// domain.ErrNotFound, and an answer for another order id is refused.
func (c coboOrders) FetchOrder(ctx context.Context, orderID string) (*handlers.ProviderOrder, error) {
	o, err := c.api.GetOrder(ctx, orderID)
	var apiErr *cobo.APIError
	if errors.As(err, &apiErr) && apiErr.HTTPStatus == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %w", domain.ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	if o.OrderID != orderID {
		return nil, fmt.Errorf("cobo answered order %q for order %q", o.OrderID, orderID)
	}
	po := &handlers.ProviderOrder{Snapshot: handlers.SnapshotFromOrder(o)}
	for _, tx := range o.Transactions {
		po.Transactions = append(po.Transactions, handlers.ProviderTx{ID: tx.TxID, Hash: tx.TxHash, Amount: tx.Amount.NullDecimal})
	}
	return po, nil
}
