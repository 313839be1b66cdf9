package cobo_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

// TestListOrdersPagesNewestFirst pages through a signed list with after=
// cursors: the query is signed as sent, every order arrives once, in order,
// whether Cobo fills pagination.after in or leaves the cursor to the last
// order_id of a full page, and the walk ends at the first short page.
func TestListOrdersPagesNewestFirst(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	ids := []string{"O6", "O5", "O4", "O3", "O2", "O1"} // newest first
	for _, afterGiven := range []bool{true, false} {
		t.Run(fmt.Sprintf("pagination.after given %v", afterGiven), func(t *testing.T) {
			var mu sync.Mutex
			var queries []url.Values
			srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
				require.Equal(t, http.MethodGet, r.Method)
				require.Equal(t, "/v2/payments/orders", r.URL.Path)
				q := r.URL.Query()
				mu.Lock()
				queries = append(queries, q)
				mu.Unlock()
				start := 0
				if a := q.Get("after"); a != "" {
					for i, id := range ids {
						if id == a {
							start = i + 1
						}
					}
				}
				end := min(start+3, len(ids))
				var items []string
				for _, id := range ids[start:end] {
					items = append(items, fmt.Sprintf(`{"order_id":%q,"status":"Completed","received_token_amount":"1","created_timestamp":"1700000000"}`, id))
				}
				after := "null"
				if afterGiven && end < len(ids) {
					after = fmt.Sprintf("%q", ids[end-1])
				}
				// total_count as a string and a null before: shapes the
				// client must tolerate.
				fmt.Fprintf(w, `{"data":[%s],"pagination":{"before":null,"after":%s,"total_count":"%d"}}`, strings.Join(items, ","), after, len(ids))
			})
			c := newClient(t, signer, srv.URL)
			var got []string
			after := ""
			for page := 0; page < 10; page++ {
				l, err := c.ListOrders(context.Background(), cobo.ListOrdersRequest{Limit: 3, After: after, Statuses: cobo.FinalOrderStatuses})
				require.NoError(t, err)
				require.Empty(t, l.Invalid)
				require.Equal(t, len(ids), l.Pagination.TotalCount)
				for _, o := range l.Orders {
					got = append(got, o.OrderID)
					require.EqualValues(t, 1700000000, o.CreatedTimestamp)
				}
				if after = l.Next(3); after == "" || l.Items() == 0 {
					break
				}
			}
			require.Equal(t, ids, got)
			require.Equal(t, "Completed,Expired,Underpaid", queries[0].Get("statuses"))
			require.Equal(t, "3", queries[0].Get("limit"))
			require.Empty(t, queries[0].Get("after"))
			require.Equal(t, "O4", queries[1].Get("after"))
			// The last page was full: whether Cobo would have said so with
			// an after, only an empty page proves it the last.
			require.Len(t, queries, 3)
			require.Equal(t, "O1", queries[2].Get("after"))
		})
	}
}

// TestOrderListToleratesShapes decodes the shapes a list answer may take:
// null or absent data and pagination, numeric cursors, and an item that is
// not an order, which is set aside without losing the rest of the page.
func TestOrderListToleratesShapes(t *testing.T) {
	t.Parallel()
	for _, body := range []string{`{}`, `{"data":null,"pagination":null}`, `{"data":[]}`} {
		var l cobo.OrderList
		require.NoError(t, l.UnmarshalJSON([]byte(body)), body)
		require.Zero(t, l.Items(), body)
		require.Empty(t, l.Next(10), body)
	}
	var l cobo.OrderList
	require.NoError(t, l.UnmarshalJSON([]byte(`{"data":[
		{"order_id":"O3","status":"Completed","received_token_amount":"-1"},
		{"order_id":"O2","status":"Completed","transactions":[{"tx_id":"t1","tx_hash":"0xh","amount":"5.5","status":"Completed","is_late":true},{"tx_id":"t0","amount":"1","status":"Completed"}]},
		{"status":"Expired"},
		{"order_id":"O1","status":"Expired","received_token_amount":0}],
		"pagination":{"after":12345,"total_count":99}}`)))
	require.Equal(t, 4, l.Items())
	require.Len(t, l.Orders, 2)
	require.Equal(t, "O2", l.Orders[0].OrderID)
	txs := l.Orders[0].Transactions
	require.NotNil(t, txs[0].IsLate)
	require.True(t, *txs[0].IsLate)
	require.Nil(t, txs[1].IsLate, "is_late absent is not false")
	require.True(t, txs[0].Completed())
	require.Len(t, l.Invalid, 2)
	require.Equal(t, "O3", l.Invalid[0].OrderID)
	require.ErrorIs(t, l.Invalid[0].Err, cobo.ErrInvalidAmount)
	require.ErrorContains(t, l.Invalid[1].Err, "order_id")
	require.Equal(t, "12345", l.Next(4))
	require.Equal(t, 99, l.Pagination.TotalCount)

	// Without Cobo's cursor, a full page continues after its last item,
	// even one that did not decode; a short page is the last.
	require.NoError(t, l.UnmarshalJSON([]byte(`{"data":[{"order_id":"O2","status":"Completed"},{"order_id":"O1","status":"x","fee_amount":"1e9"}]}`)))
	require.Equal(t, "O1", l.Next(2))
	require.Empty(t, l.Next(3))
	require.Error(t, l.UnmarshalJSON([]byte(`{"data":{"order_id":"O1"}}`)), "data must be an array")
}

func TestListOrdersRequestValidate(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	c := newClient(t, signer, "http://127.0.0.1:1")
	for _, req := range []cobo.ListOrdersRequest{
		{Limit: 51}, {Limit: -1}, {After: "a", Before: "b"}, {Statuses: []string{"Completed,Expired"}}, {Statuses: []string{""}},
	} {
		_, err := c.ListOrders(context.Background(), req)
		require.Error(t, err, "%+v", req)
	}
}
