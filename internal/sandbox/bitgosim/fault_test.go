package bitgosim_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/sandbox/bitgosim"
)

// TestParseFaultList covers the -bitgo-faults syntax: kind[:count[:delay]],
// comma-separated, in order, count 1 unless given.
func TestParseFaultList(t *testing.T) {
	t.Parallel()
	got, err := bitgosim.ParseFaultList(" error500:2, lose ,,slow:1:2s,Reserve_Retriable,reserved:3,release,drop:2")
	require.NoError(t, err)
	require.Equal(t, []bitgosim.Fault{
		{Kind: bitgosim.FaultError500, Count: 2},
		{Kind: bitgosim.FaultLoseResponse, Count: 1},
		{Kind: bitgosim.FaultSlow, Count: 1, Delay: 2 * time.Second},
		{Kind: bitgosim.FaultReserveRetriable, Count: 1},
		{Kind: bitgosim.FaultReserved, Count: 3},
		{Kind: bitgosim.FaultRelease, Count: 1},
		{Kind: bitgosim.FaultDrop, Count: 2},
	}, got)

	got, err = bitgosim.ParseFaultList("")
	require.NoError(t, err)
	require.Empty(t, got, "no faults")
}

func TestParseFaultListRefuses(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"500":               `unknown fault kind "500": want one of error500, drop, lose,`,
		"error500:x":        `fault "error500:x": count must be a positive integer`,
		"error500:0":        "count must be a positive integer",
		"slow:1:soon":       "delay must be a positive duration",
		"slow:1:0s":         "delay must be a positive duration",
		"slow:1:2s:extra":   "want kind[:count[:delay]]",
		"lose,teleport:1":   `fault "teleport:1": unknown fault kind "teleport"`,
		"reserved:-1":       "count must be a positive integer",
		"release:1:-3s":     "delay must be a positive duration",
		"error500:2,drop:a": `fault "drop:a"`,
	} {
		_, err := bitgosim.ParseFaultList(in)
		require.ErrorContains(t, err, want, in)
	}
}
