package cobosim_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
)

// listAll pages through GET /v2/payments/orders with paystream's client.
func listAll(t *testing.T, c *cobo.Client, req cobo.ListOrdersRequest) []string {
	t.Helper()
	var ids []string
	for range 20 {
		l, err := c.ListOrders(context.Background(), req)
		require.NoError(t, err)
		require.Empty(t, l.Invalid)
		for _, o := range l.Orders {
			ids = append(ids, o.OrderID)
		}
		if req.After = l.Next(req.Limit); req.After == "" {
			return ids
		}
	}
	t.Fatal("the list never ended")
	return nil
}

// TestListOrders: the simulator lists the orders it knows newest first by
// creation (ties by update, then id), in Cobo's shapes, with working
// after= pagination and the statuses, merchant_id and psp_order_id
// filters; foreign orders are never listed.
func TestListOrders(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	put := func(id, merchant, status string, created, updated int64) {
		e.sim.PutOrder(cobo.OrderData{OrderID: id, MerchantID: merchant, PSPOrderCode: "P-" + id, Status: status,
			CreatedTimestamp: cobo.Int64(created), UpdatedTimestamp: cobo.Int64(updated),
			Transactions: []cobo.OrderTransaction{{TxID: "t-" + id, TxHash: "0x" + id, Status: "Completed"}}})
	}
	put("O-c", "M1001", "Completed", 300, 400)
	put("O-a", "M1002", "Expired", 100, 5000)
	put("O-e", "M1001", "Pending", 500, 500)
	put("O-b", "M1001", "Underpaid", 300, 350)
	put("O-d", "M1002", "Processing", 400, 410)
	e.sim.RecordForeignOrder("O-foreign")
	c, err := cobo.NewClient(cobo.ClientConfig{BaseURL: e.srv.URL + "/v2", Signer: e.signer, Config: httpretry.Config{MaxAttempts: 1}})
	require.NoError(t, err)

	require.Equal(t, []string{"O-e", "O-d", "O-c", "O-b", "O-a"}, listAll(t, c, cobo.ListOrdersRequest{Limit: 2}))
	require.Equal(t, []string{"O-c", "O-b", "O-a"}, listAll(t, c, cobo.ListOrdersRequest{Limit: 2, Statuses: cobo.FinalOrderStatuses}))
	require.Equal(t, []string{"O-e", "O-c", "O-b"}, listAll(t, c, cobo.ListOrdersRequest{Limit: 50, MerchantID: "M1001"}))
	require.Equal(t, []string{"O-d"}, listAll(t, c, cobo.ListOrdersRequest{PSPOrderCode: "P-O-d"}))

	l, err := c.ListOrders(context.Background(), cobo.ListOrdersRequest{Limit: 2})
	require.NoError(t, err)
	require.Equal(t, 5, l.Pagination.TotalCount)
	require.Equal(t, "O-d", l.Pagination.After)
	require.Empty(t, l.Pagination.Before)
	require.Equal(t, "0xO-e", l.Orders[0].Transactions[0].TxHash, "orders come with their transactions")
	l, err = c.ListOrders(context.Background(), cobo.ListOrdersRequest{Limit: 2, Before: "O-b"})
	require.NoError(t, err)
	require.Equal(t, "O-d", l.Orders[0].OrderID, "before= gives the newer page")

	requireError(t, e.do(t, http.MethodGet, "/v2/payments/orders", "statuses=Completed,Done", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
	requireError(t, e.do(t, http.MethodGet, "/v2/payments/orders", "after=O-nope", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
	requireError(t, e.do(t, http.MethodGet, "/v2/payments/orders", "limit=51", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
	r := e.do(t, http.MethodGet, "/v2/payments/orders", "statuses=Expired&merchant_id=M9", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.JSONEq(t, `{"data":[],"pagination":{"before":"","after":"","total_count":0}}`, string(r.body))
}
