package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/sandbox/bitgosim"
)

func TestBitGoSwitches(t *testing.T) {
	o, err := parseOptions([]string{"-bitgo-faults", "drop:2,lose"}, env(nil), io.Discard)
	require.NoError(t, err)
	require.False(t, o.bitgo.NonceOnce, "nonces are reusable unless asked")
	require.False(t, o.bitgo.ReplayConflict)
	require.Equal(t, []bitgosim.Fault{{Kind: bitgosim.FaultDrop, Count: 2}, {Kind: bitgosim.FaultLoseResponse, Count: 1}}, o.bitgoFaults)

	o, err = parseOptions([]string{"-bitgo-nonce-once", "-bitgo-replay-conflict"}, env(nil), io.Discard)
	require.NoError(t, err)
	require.True(t, o.bitgo.NonceOnce)
	require.True(t, o.bitgo.ReplayConflict)

	o, err = parseOptions(nil, env(map[string]string{"PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE": "true"}), io.Discard)
	require.NoError(t, err)
	require.True(t, o.bitgo.NonceOnce)

	_, err = parseOptions(nil, env(map[string]string{"PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE": "sometimes"}), io.Discard)
	require.Error(t, err)
}
