package payer_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox/payer"
)

// TestUndeliveredOrders plays orders of which some never get a webhook, as
// when Cobo gave up on them: nothing is POSTed for those, while Cobo's
// order API and order list know them like any other, late deposits
// included (marked is_late, as the deposits are marked not late). The
// orders are the same as in a run that delivers everything.
func TestUndeliveredOrders(t *testing.T) {
	key := newKey(t)
	c := newCollector(t, key, nil)
	sim, client := apiClient(t)
	cfg := baseConfig(c.srv.URL, key)
	cfg.Orders, cfg.Undelivered, cfg.Duplicates, cfg.LateRatio, cfg.Sim = 20, 5, 0, 0.5, sim
	st, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Equal(t, 20, st.Orders)
	require.Equal(t, 5, st.Undelivered)
	require.Len(t, st.UndeliveredOrderIDs, 5)
	require.True(t, slices.IsSorted(st.UndeliveredOrderIDs))
	require.Equal(t, 20, sim.State().Orders, "Cobo knows every order")

	delivered := map[string]bool{}
	for _, d := range c.deliveries() {
		delivered[d.env.OrderID] = true
	}
	require.Len(t, delivered, 15)
	for _, id := range st.UndeliveredOrderIDs {
		require.False(t, delivered[id], "nothing was delivered for %s", id)
	}
	distinct := map[string]bool{}
	for _, d := range c.deliveries() {
		distinct[d.env.EventID] = true
	}
	require.Equal(t, st.Events, len(distinct), "Events counts delivered orders' events only")

	// The order list has them all, final and with their transactions.
	var listed []cobo.OrderData
	req := cobo.ListOrdersRequest{Limit: 7}
	for {
		l, err := client.ListOrders(context.Background(), req)
		require.NoError(t, err)
		listed = append(listed, l.Orders...)
		if req.After = l.Next(req.Limit); req.After == "" {
			break
		}
	}
	require.Len(t, listed, 20)
	var late, deposits int
	for _, o := range listed {
		require.Contains(t, cobo.FinalOrderStatuses, o.Status)
		for _, tx := range o.Transactions {
			require.NotNil(t, tx.IsLate, "%s: the sandbox says whether each transaction is late", o.OrderID)
			require.NotEmpty(t, tx.TxHash)
			if *tx.IsLate {
				late++
				require.GreaterOrEqual(t, int64(o.UpdatedTimestamp), int64(tx.UpdatedTimestamp)/1000, "the late notice's time is the order's")
			} else {
				deposits++
			}
		}
	}
	require.Equal(t, st.Late, late)
	require.Positive(t, late)
	require.Positive(t, deposits)

	// The same seed without undelivered orders plays the same orders, and
	// delivers every one.
	c2 := newCollector(t, key, nil)
	sim2, client2 := apiClient(t)
	cfg2 := baseConfig(c2.srv.URL, key)
	cfg2.Orders, cfg2.Duplicates, cfg2.LateRatio, cfg2.Sim = 20, 0, 0.5, sim2
	st2, err := payer.Run(context.Background(), cfg2)
	require.NoError(t, err)
	require.Zero(t, st2.Undelivered)
	delivered2 := map[string]bool{}
	for _, d := range c2.deliveries() {
		delivered2[d.env.OrderID] = true
	}
	require.Len(t, delivered2, 20)
	for _, o := range listed {
		a, err := client.GetOrder(context.Background(), o.OrderID)
		require.NoError(t, err)
		b, err := client2.GetOrder(context.Background(), o.OrderID)
		require.NoError(t, err)
		ja, err := json.Marshal(a)
		require.NoError(t, err)
		jb, err := json.Marshal(b)
		require.NoError(t, err)
		require.JSONEq(t, string(ja), string(jb), o.OrderID)
	}
}
