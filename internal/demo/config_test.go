package demo

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPortPlan: by default the usual ports; with a base port every
// listener moves to its offset, no two share a port, and the workers come
// last, one each.
func TestPortPlan(t *testing.T) {
	t.Parallel()
	p := planPorts(0, 2)
	require.Equal(t, ports{ingest: 8080, admin: 8081, nats: 4222, sandbox: 9000, console: 8082, workers: []int{9091, 9092}}, p)
	require.Equal(t, "8080 (ingest), 8081 (admin), 4222 (NATS), 9000 (sandbox), 8082 (console), 9091-9092 (workers)", p.String())

	p = planPorts(18080, 3)
	require.Equal(t, ports{ingest: 18080, admin: 18081, nats: 18082, sandbox: 18083, console: 18084, workers: []int{18085, 18086, 18087}}, p)
	require.Equal(t, "18080 (ingest), 18081 (admin), 18082 (NATS), 18083 (sandbox), 18084 (console), 18085-18087 (workers)", p.String())
	require.Equal(t, "20000 (ingest), 20001 (admin), 20002 (NATS), 20003 (sandbox), 20004 (console), 20005 (worker)", planPorts(20000, 1).String())

	for _, base := range []int{0, 1024, 30000} {
		for _, workers := range []int{1, 2, 5} {
			p := planPorts(base, workers)
			seen := map[int]bool{}
			for _, port := range append([]int{p.ingest, p.admin, p.nats, p.sandbox, p.console}, p.workers...) {
				require.False(t, seen[port], "port %d twice with base %d and %d workers", port, base, workers)
				seen[port] = true
			}
			require.Len(t, p.workers, workers)
		}
	}

	// The highest base port leaves room for the last worker.
	p = planPorts(maxBasePort(2), 2)
	require.Equal(t, 65535, p.workers[1])
	require.NoError(t, Config{Orders: 1, BasePort: maxBasePort(2)}.WithDefaults().validate())
	require.ErrorContains(t, Config{Orders: 1, BasePort: maxBasePort(2) + 1}.WithDefaults().validate(),
		"-base-port must be 0 (the default ports) or from 1 to 65529, leaving room for 7 ports with -workers 2; got 65530")
}

// TestConfigNamesTheFlag: WithDefaults fills the named defaults, and
// every refusal of validate names the flag at fault.
func TestConfigNamesTheFlag(t *testing.T) {
	t.Parallel()
	c := Config{Orders: 1}.WithDefaults()
	require.Equal(t, DefaultBinDir, c.BinDir)
	require.Equal(t, DefaultDir, c.Dir)
	require.Equal(t, DefaultWorkers, c.Workers)
	require.Equal(t, DefaultCoboShape, c.CoboShape)
	require.Equal(t, DefaultMerchants, c.Merchants)
	require.NotNil(t, c.Out)
	require.NoError(t, c.validate())
	require.NoError(t, Config{Orders: DefaultOrders, Rate: DefaultRate, Faults: DefaultFaults, BitGoFaults: DefaultBitGoFaults}.WithDefaults().validate())

	for want, c := range map[string]Config{
		"-orders must not be negative":                             {Orders: -1},
		"-foreign-orders must not be negative":                     {Orders: 1, ForeignOrders: -1},
		"-orders and -foreign-orders are both 0":                   {},
		"-undelivered-orders must be from 0 to -orders (3), got 4": {Orders: 3, UndeliveredOrders: 4},
		"-rate must not be negative":                               {Orders: 1, Rate: -1},
		"-workers must be positive":                                {Orders: 1, Workers: -1},
		"-duration must not be negative":                           {Orders: 1, Duration: -1},
		"-base-port must be 0":                                     {Orders: 1, BasePort: -80},
		`-faults: unknown fault kind "boom"`:                       {Orders: 1, Faults: "boom"},
		`-bitgo-faults: fault "500"`:                               {Orders: 1, BitGoFaults: "500"},
		"-cobo-shape":                                              {Orders: 1, CoboShape: "old"},
		"-merchants must not name an empty merchant id":            {Orders: 1, Merchants: "M1,,M2"},
	} {
		require.ErrorContains(t, c.WithDefaults().validate(), want)
	}
}

// TestSettling: the run settles only once nothing changed for a second,
// nothing is pending and every order is final, the undelivered ones
// included; while only those are missing it says once what it waits for.
func TestSettling(t *testing.T) {
	t.Parallel()
	st := &settling{cfg: Config{Orders: 10, UndeliveredOrders: 3}}
	s := snapshot{
		in:   arrivals{stored: 40, events: 40},
		out:  outcomes{completed: 5, expired: 2, done: 12, inFlight: 2},
		prov: providers{items: 8, bitgo: 4},
	}
	require.Empty(t, st.next(s, snapshot{}), "still changing")
	require.Empty(t, st.next(s, s), "allocations pending")

	s.out.inFlight, s.out.done = 0, 14
	s.prov.items = 10
	require.Equal(t, []string{"waiting for reconciliation (every 15s) to complete 3 orders whose webhooks never came"}, st.next(s, s))
	require.Empty(t, st.next(s, s), "said once")
	require.False(t, st.settled)

	s.out.completed, s.in.reconciled = 8, 3
	s.out.done = 20
	s.prov.items = 16
	require.Equal(t, []string{
		"settled: ✔ every allocation exists exactly once at Cobo or BitGo",
		"settled: ✔ all 10 orders final, 3 repaired by reconciliation (3 never had a webhook)",
	}, st.next(s, s))
	require.True(t, st.justSettled)
	require.Empty(t, st.next(s, s), "settles once")
	require.False(t, st.justSettled)

	// Without undelivered orders, missing orders are just not final yet.
	st = &settling{cfg: Config{Orders: 10, ForeignOrders: 2}}
	s = snapshot{in: arrivals{stored: 40}, out: outcomes{completed: 9, done: 9, failed: 2, refused: 1}, prov: providers{items: 6, bitgo: 3}, foreignAllocs: 1}
	require.Empty(t, st.next(s, s))
	s.out.completed = 10
	require.Equal(t, []string{
		"settled: ✘ 6 items at Cobo and 3 at BitGo for 10 recorded allocations (1 refused or invalid, held by no provider)",
		"settled: ✘ 1 allocations at Cobo or BitGo name a foreign order",
	}, st.next(s, s))
}
