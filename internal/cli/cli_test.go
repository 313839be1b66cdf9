package cli_test

import (
	"bytes"
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cli"
)

func TestFlagsFallBackToTheEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{"T_URL": "nats://env:4222", "T_N": "7", "T_WAIT": "3s", "T_ON": "true"}
	var (
		url  string
		n    int
		wait time.Duration
		on   bool
	)
	fs := cli.NewFlags("t", func(k string) string { return env[k] }, &bytes.Buffer{})
	fs.StringTo(&url, "url", "T_URL", "nats://default:4222", "server")
	fs.IntTo(&n, "n", "T_N", 1, "count")
	fs.DurationTo(&wait, "wait", "T_WAIT", time.Second, "wait")
	fs.BoolTo(&on, "on", "T_ON", false, "switch")
	require.NoError(t, fs.Parse([]string{"-n", "9"}))
	require.Equal(t, "nats://env:4222", url, "the environment replaces the default")
	require.Equal(t, 9, n, "a flag replaces the environment")
	require.Equal(t, 3*time.Second, wait)
	require.True(t, on)
}

func TestParseSaysWhatKindOfError(t *testing.T) {
	t.Parallel()
	newFlags := func(env map[string]string) *cli.Flags {
		fs := cli.NewFlags("t", func(k string) string { return env[k] }, &bytes.Buffer{})
		fs.Int("n", "T_N", 1, "count")
		return fs
	}
	require.ErrorIs(t, newFlags(nil).Parse([]string{"-h"}), flag.ErrHelp)
	for _, args := range [][]string{{"-nope"}, {"-n", "many"}} {
		err := newFlags(nil).Parse(args)
		require.ErrorIs(t, err, cli.ErrBadFlag, "%v", args)
	}
	err := newFlags(map[string]string{"T_N": "many"}).Parse(nil)
	require.ErrorContains(t, err, `T_N="many"`, "a bad environment value names the variable")
	require.NotErrorIs(t, err, cli.ErrBadFlag)
}
