package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cli"
)

// TestMain runs the command's own main when the test binary is started as
// the worker (see runMain), so that exit statuses are those of the real
// process.
func TestMain(m *testing.M) {
	if os.Getenv("PAYSTREAM_TEST_WORKER_MAIN") == "1" {
		os.Args = append([]string{"worker"}, strings.Fields(os.Getenv("PAYSTREAM_TEST_WORKER_ARGS"))...)
		main()
		return
	}
	os.Exit(m.Run())
}

// runMain runs the worker process with args and an empty PAYSTREAM_*
// environment, and returns its exit status, stdout and stderr.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = []string{"PAYSTREAM_TEST_WORKER_MAIN=1", "PAYSTREAM_TEST_WORKER_ARGS=" + strings.Join(args, " ")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	require.NoError(t, err)
	return 0, stdout.String(), stderr.String()
}

func TestCommandLineAnswers(t *testing.T) {
	t.Parallel()
	commands := []string{"replay", "dlq", "reconcile", "help"}

	code, _, stderr := runMain(t, "-h")
	require.Equal(t, 0, code, "help asked for is no failure")
	for _, c := range commands {
		require.Contains(t, stderr, "\n  "+c+" ", "worker -h lists %s", c)
	}
	require.Contains(t, stderr, "  -nats-url string", "and the worker's own flags")

	code, stdout, _ := runMain(t, "help")
	require.Equal(t, 0, code)
	for _, c := range commands {
		require.Contains(t, stdout, "\n  "+c+" ", "worker help lists %s", c)
	}
	code, stdout, _ = runMain(t, "help", "replay")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "Usage: worker replay [flags]")
	require.Contains(t, stdout, "  -apply")

	for _, args := range [][]string{{"foo"}, {"help", "foo"}} {
		code, stdout, stderr = runMain(t, args...)
		require.Equal(t, 2, code, "%v is a wrong command line", args)
		require.Empty(t, stdout)
		require.Contains(t, stderr, `worker: invalid command line: unknown command "foo" (worker -h lists the commands)`)
	}

	code, _, stderr = runMain(t, "dlq", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, stderr, "worker dlq list [flags]")
	require.Contains(t, stderr, "worker dlq redrive -seq N | -all [flags]")
	code, _, stderr = runMain(t, "dlq", "list", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, stderr, "  -order string")

	for _, args := range [][]string{{"dlq"}, {"dlq", "purge"}, {"-no-such-flag"}, {"replay", "extra"}, {"dlq", "redrive"}, {"replay", "-since", "yesterday"}, {"-metrics-listen", "-"}} {
		code, _, stderr = runMain(t, args...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
	}
	code, _, stderr = runMain(t, "replay", "-verify")
	require.Equal(t, 2, code, stderr)
	require.Contains(t, stderr, "worker: invalid command line: -cobo-env dev|prod or -cobo-pubkey is required")
	// A command line that is right but cannot run is a plain failure.
	code, _, stderr = runMain(t, "replay", "-apply", "-rules", "/nonexistent/rules.json", "-cobo-api-secret-file", "/nonexistent/secret", "-cobo-env", "dev")
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "worker: -rules: ")
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	require.Equal(t, 0, exitStatus(nil, &bytes.Buffer{}))
	require.Equal(t, 0, exitStatus(flag.ErrHelp, &bytes.Buffer{}))
	var stderr bytes.Buffer
	require.Equal(t, 2, exitStatus(errors.Join(cli.ErrBadFlag), &stderr))
	require.Equal(t, 1, exitStatus(errors.New("nats down"), &stderr))
	require.Contains(t, stderr.String(), "worker: nats down\n")
}

// TestConfigErrorsNameTheFlags: values only a library constructor checks
// are refused before the worker connects anywhere, naming the flag.
func TestConfigErrorsNameTheFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.json")
	require.NoError(t, os.WriteFile(rules, []byte(`{"splits":[],"late_payments":"hold"}`), 0o600))
	secret := filepath.Join(dir, "cobo.secret")
	require.NoError(t, os.WriteFile(secret, []byte(strings.Repeat("ab", 32)), 0o600))
	base := []string{"-nats-url", "nats://127.0.0.1:1", "-connect-wait", "1s", "-cobo-env", "dev", "-metrics-listen", "-", "-rules", rules, "-cobo-api-secret-file", secret}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-cobo-api-url", "ftp://cobo"}, "-cobo-api-url, -cobo-api-secret-file: worker config: Allocation.Cobo: cobo client config: BaseURL must be an http(s) URL"},
		{[]string{"-batch-max", "99"}, "-batch-max, -batch-wait, -alloc-stuck-after: worker config: Allocation.Batcher.BatchMax must be 1 to 50, got 99"},
		{[]string{"-orphan-after", "-1s"}, "-orphan-after: worker config: Allocation.Sweeper.OrphanAfter must be positive"},
		{[]string{"-concurrency", "-1"}, "-concurrency, -max-deliver, -ack-wait: worker config: Consumer.Concurrency must be at least 1"},
		{[]string{"-stream-replicas", "6"}, "-stream-replicas, -retention: worker config: Stream.Replicas must be 1 to 5, got 6"},
		{[]string{"-bitgo-token-file", secret, "-bitgo-enterprise-id", "a b", "-bitgo-signing-key-file", secret}, "-bitgo-url, -bitgo-enterprise-id, -bitgo-token-file, -bitgo-signing-key-file, -bitgo-currencies: worker config: Allocation.BitGo: bitgo client config: EnterpriseID"},
		{[]string{"-pprof", "-metrics-listen", ":9091"}, "-pprof on -metrics-listen :9091, which is not loopback, needs -metrics-token-file"},
	} {
		err := run(context.Background(), append(append([]string{}, base...), c.args...), noEnv, &bytes.Buffer{}, &bytes.Buffer{})
		require.ErrorContains(t, err, c.want, "%v", c.args)
	}
}
