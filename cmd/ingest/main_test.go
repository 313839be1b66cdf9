package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cli"
)

func noEnv(string) string { return "" }

// TestFlagRulesNameTheFlags: flags that contradict each other are refused
// before anything starts, naming the flags, with exit status 2.
func TestFlagRulesNameTheFlags(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "-cobo-env dev|prod or -cobo-pubkey is required"},
		{[]string{"-cobo-env", "staging"}, "-cobo-env: want dev or prod"},
		{[]string{"-cobo-pubkey", "zz"}, "-cobo-pubkey"},
		{[]string{"-cobo-env", "dev", "-nats-listen-tls-cert", "c.pem"}, "-nats-listen-tls-cert and -nats-listen-tls-key go together"},
		{[]string{"-cobo-env", "dev", "-nats-listen", "0.0.0.0:4222"}, "-nats-listen 0.0.0.0:4222 is not loopback: the embedded server then needs -nats-listen-tls-cert and -nats-listen-tls-key"},
		{[]string{"-cobo-env", "dev", "-pprof", "-admin-listen", ":8081"}, "-pprof on -admin-listen :8081, which is not loopback, needs -admin-token-file"},
		{[]string{"-cobo-env", "dev", "-dedup-window", "48h", "-stream-max-age", "24h"}, "-dedup-window (48h0m0s) must not be longer than -stream-max-age (24h0m0s)"},
		{[]string{"-cobo-env", "dev", "-store-sync", "sometimes"}, "-store-sync: want always or a positive duration"},
		{[]string{"-cobo-env", "dev", "-group-commit", "maybe"}, "-group-commit: want auto, on or off"},
		{[]string{"-cobo-env", "dev", "extra"}, `unexpected argument "extra"`},
		{[]string{"-cobo-env", "dev", "-log-level", "loud"}, "-log-level, -log-format"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		err := run(context.Background(), c.args, noEnv, &bytes.Buffer{}, &stderr)
		require.ErrorContains(t, err, c.want, "%v", c.args)
		if len(c.args) > 0 && c.args[0] == "-cobo-env" {
			require.Equal(t, 2, exitStatus(err, &stderr), "%v", c.args)
		}
	}
	// A remote NATS does not need the embedded server's TLS.
	err := run(context.Background(), []string{"-cobo-env", "dev", "-nats-listen", "0.0.0.0:4222", "-nats-url", "nats://127.0.0.1:1", "-connect-wait", "1ms",
		"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0"}, noEnv, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "no servers available")
	require.Equal(t, 1, exitStatus(err, &bytes.Buffer{}))
}

func TestHelpAndBadFlags(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"-h"}, noEnv, &bytes.Buffer{}, &stderr)
	require.ErrorIs(t, err, flag.ErrHelp)
	require.Equal(t, 0, exitStatus(err, &bytes.Buffer{}))
	require.Contains(t, stderr.String(), "  -cobo-env string")

	err = run(context.Background(), []string{"-no-such-flag"}, noEnv, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorIs(t, err, cli.ErrBadFlag)
	require.Equal(t, 2, exitStatus(err, &bytes.Buffer{}))
	require.Equal(t, 1, exitStatus(errors.New("listen :8080: address already in use"), &bytes.Buffer{}))
}
