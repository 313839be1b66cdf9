package payer_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
)

// apiClient serves sim on loopback and returns paystream's Cobo client
// for it, with a key the simulator trusts.
func apiClient(t *testing.T) (*cobosim.Sim, *cobo.Client) {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: zerolog.Nop()})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: srv.URL + "/v2", Signer: signer,
		Config: httpretry.Config{MaxAttempts: 1, AttemptTimeout: 2 * time.Second}})
	require.NoError(t, err)
	return sim, client
}

// TestForeignOrders plays our orders and a foreign customer's: the
// foreign webhooks verify with the same key and look like ours, but Cobo's
// order API answers only ours.
func TestForeignOrders(t *testing.T) {
	key := newKey(t)
	c := newCollector(t, key, nil)
	sim, client := apiClient(t)
	cfg := baseConfig(c.srv.URL, key)
	cfg.Orders, cfg.ForeignOrders, cfg.Concurrency, cfg.Sim = 30, 8, 1, sim
	st, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)

	require.Zero(t, c.badAuth, "every delivery, foreign ones included, verifies with the webhook key")
	require.Zero(t, c.malformed)
	require.Equal(t, 30, st.Orders)
	require.Equal(t, 30, st.ByStatus["Completed"]+st.ByStatus["Expired"]+st.ByStatus["Underpaid"], "foreign orders are not in ByStatus")
	require.Equal(t, 8, st.ForeignOrders)
	require.Len(t, st.ForeignOrderIDs, 8)
	require.True(t, slices.IsSorted(st.ForeignOrderIDs))
	require.ElementsMatch(t, st.ForeignOrderIDs, sim.ForeignOrderIDs())
	simState := sim.State()
	require.Equal(t, 30, simState.Orders, "foreign orders are never registered")
	require.Equal(t, 8, simState.ForeignOrders)
	require.ElementsMatch(t, st.ForeignOrderIDs, simState.ForeignOrderIDs)

	foreign := map[string]bool{}
	for _, id := range st.ForeignOrderIDs {
		foreign[id] = true
	}
	// Distinct events by order, and where each order first and last shows.
	events := map[string]map[string]cobo.Envelope{}
	first, last := map[string]int{}, map[string]int{}
	for i, d := range c.deliveries() {
		id := d.env.OrderID
		if events[id] == nil {
			events[id] = map[string]cobo.Envelope{}
			first[id] = i
		}
		events[id][d.env.EventID] = d.env
		last[id] = i
	}
	require.Len(t, events, 38)
	distinct := 0
	for _, evs := range events {
		distinct += len(evs)
	}
	require.Equal(t, st.Events, distinct, "Events counts both kinds")

	ctx := context.Background()
	// Where each kind's deliveries start and end (Concurrency 1 plays the
	// orders one after another, in schedule order).
	n := len(c.deliveries())
	firstOurs, lastOurs, firstForeign, lastForeign := n, -1, n, -1
	var late int
	for id, evs := range events {
		require.Regexp(t, orderIDPattern, id, "foreign ids look like ours")
		if !foreign[id] {
			firstOurs, lastOurs = min(firstOurs, first[id]), max(lastOurs, last[id])
			o, err := client.GetOrder(ctx, id)
			require.NoError(t, err, "our order %s is known to the API", id)
			require.Equal(t, id, o.OrderID)
			continue
		}
		firstForeign, lastForeign = min(firstForeign, first[id]), max(lastForeign, last[id])
		_, err := client.GetOrder(ctx, id)
		var apiErr *cobo.APIError
		require.True(t, errors.As(err, &apiErr), "foreign order %s: %v", id, err)
		require.Equal(t, http.StatusNotFound, apiErr.HTTPStatus)
		require.Equal(t, cobosim.CodeNotFound, apiErr.Code)
		require.NotEmpty(t, apiErr.ErrorID)

		var completed, deposits, lates int
		for _, e := range evs {
			switch e.Type {
			case cobo.EventOrderStatusUpdated:
				var o cobo.OrderData
				require.NoError(t, json.Unmarshal(e.Data, &o))
				require.Contains(t, payer.DefaultMerchants, o.MerchantID, "foreign orders use our merchant ids")
				if o.Status != "Pending" {
					require.Equal(t, "Completed", o.Status, "every foreign order completes")
					require.True(t, o.ReceivedTokenAmount.Decimal.IsPositive())
					completed++
				}
			case cobo.EventTransactionCompleted:
				deposits++
			case cobo.EventTransactionLate:
				var tx cobo.TransactionData
				require.NoError(t, json.Unmarshal(e.Data, &tx))
				require.Equal(t, id, tx.OrderID)
				require.True(t, tx.DestinationAmount().Decimal.IsPositive())
				lates++
			}
		}
		require.Equal(t, 1, completed, id)
		require.Positive(t, deposits, id)
		require.LessOrEqual(t, lates, 1, id)
		late += lates
	}
	require.Equal(t, 4, late, "every second foreign order, the first included, has a late deposit")
	require.Equal(t, 8, sim.State().ForeignOrderLookups, "each foreign order looked up once above")
	// Interleaved: the foreign orders come neither all before nor all
	// after ours.
	require.Less(t, firstForeign, lastOurs)
	require.Greater(t, lastForeign, firstOurs)
}

// TestForeignOrdersLeaveOursUnchanged: adding foreign orders changes none
// of our orders' webhooks, and the foreign ids never equal ours.
func TestForeignOrdersLeaveOursUnchanged(t *testing.T) {
	key := newKey(t)
	run := func(foreign int) (map[string][]string, payer.Stats) {
		t.Helper()
		c := newCollector(t, key, nil)
		cfg := baseConfig(c.srv.URL, key)
		cfg.Orders, cfg.ForeignOrders, cfg.Concurrency = 15, foreign, 3
		st, err := payer.Run(context.Background(), cfg)
		require.NoError(t, err)
		return normalise(perOrder(c.deliveries())), st
	}
	without, st0 := run(0)
	with, st := run(6)
	require.Zero(t, st0.ForeignOrders)
	require.Empty(t, st0.ForeignOrderIDs)
	require.Len(t, with, 21)
	for _, id := range st.ForeignOrderIDs {
		_, clash := without[id]
		require.False(t, clash, "foreign order %s has one of our ids", id)
		delete(with, id)
	}
	require.Equal(t, without, with)
	require.Equal(t, st0.Orders, st.Orders)
	require.Equal(t, st0.ByStatus, st.ByStatus)
	require.Equal(t, st0.Late, st.Late)

	// Only foreign orders: every order is one of theirs.
	c := newCollector(t, key, nil)
	cfg := baseConfig(c.srv.URL, key)
	cfg.Orders, cfg.ForeignOrders = 0, 3
	only, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Zero(t, only.Orders)
	require.Equal(t, 3, only.ForeignOrders)
	require.Len(t, perOrder(c.deliveries()), 3)
}
