package apply

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// answer is Cobo's order API answering one order or one error.
type answer struct {
	order cobo.OrderData
	err   error
}

func (a answer) GetOrder(context.Context, string) (cobo.OrderData, error) { return a.order, a.err }

func TestCoboOrdersMapsCobosAnswer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	_, err := coboOrders{api: answer{err: &cobo.APIError{HTTPStatus: http.StatusNotFound}}}.FetchOrder(ctx, "O1")
	require.ErrorIs(t, err, domain.ErrNotFound, "a 404 means the order is not ours")

	transient := errors.New("connection reset")
	_, err = coboOrders{api: answer{err: transient}}.FetchOrder(ctx, "O1")
	require.ErrorIs(t, err, transient)
	require.NotErrorIs(t, err, domain.ErrNotFound)

	_, err = coboOrders{api: answer{order: cobo.OrderData{OrderID: "O2"}}}.FetchOrder(ctx, "O1")
	require.ErrorContains(t, err, `cobo answered order "O2" for order "O1"`)

	po, err := coboOrders{api: answer{order: cobo.OrderData{OrderID: "O1", Status: "Completed",
		Transactions: []cobo.OrderTransaction{{TxID: "tx1", TxHash: "0xfeed"}}}}}.FetchOrder(ctx, "O1")
	require.NoError(t, err)
	require.Equal(t, domain.OrderStatus("Completed"), po.Snapshot.Status)
	require.Len(t, po.Transactions, 1)
	require.Equal(t, "tx1", po.Transactions[0].ID)
	require.Equal(t, "0xfeed", po.Transactions[0].Hash)
}
