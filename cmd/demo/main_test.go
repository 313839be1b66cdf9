package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/demo"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestFlagsIntoConfig: the flags, and their environment variables, land
// in the demo's Config.
func TestFlagsIntoConfig(t *testing.T) {
	t.Parallel()
	cfg, err := parseFlags([]string{"-undelivered-orders", "5", "-base-port", "18080", "-rate", "7.5", "-duration", "1m"},
		env(map[string]string{"PAYSTREAM_DEMO_WORKERS": "3"}), io.Discard)
	require.NoError(t, err)
	require.Equal(t, 5, cfg.UndeliveredOrders)
	require.Equal(t, 18080, cfg.BasePort)
	require.Equal(t, 7.5, cfg.Rate)
	require.Equal(t, time.Minute, cfg.Duration)
	require.Equal(t, 3, cfg.Workers)
	require.Equal(t, demo.DefaultOrders, cfg.Orders)
	require.Equal(t, demo.DefaultFaults, cfg.Faults)
	require.Equal(t, demo.DefaultBitGoFaults, cfg.BitGoFaults)
	require.Zero(t, cfg.ForeignOrders)
}

// TestBadFlagsFailBeforeStarting: refusals name the flag, and come before
// any process or directory is touched.
func TestBadFlagsFailBeforeStarting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() + "/run"
	for want, args := range map[string][]string{
		"-rate: \"fast\" is not a number":       {"-rate", "fast"},
		"-undelivered-orders must be from 0 to": {"-orders", "2", "-undelivered-orders", "3"},
		"-base-port must be 0":                  {"-base-port", "70000"},
		"unexpected arguments":                  {"now"},
		"PAYSTREAM_DEMO_ORDERS":                 nil,
	} {
		e := env(nil)
		if args == nil {
			e = env(map[string]string{"PAYSTREAM_DEMO_ORDERS": "lots"})
		}
		err := run(context.Background(), append([]string{"-dir", dir, "-bin", t.TempDir()}, args...), e, io.Discard)
		require.ErrorContains(t, err, want)
		require.NoDirExists(t, dir)
	}
}
