package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/testutil"
)

func noEnv(string) string { return "" }

func TestSubcommandFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"dlq"}, "worker dlq needs list or redrive"},
		{[]string{"dlq", "purge"}, `unknown dlq command "purge"`},
		{[]string{"dlq", "redrive"}, "give -seq N or -all"},
		{[]string{"dlq", "redrive", "-seq", "3", "-all"}, "exclude each other"},
		{[]string{"dlq", "redrive", "-seq", "3", "-order", "O1"}, "go with -all"},
		{[]string{"dlq", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"replay", "-apply"}, "-no-allocations"},
		{[]string{"replay", "-apply", "-no-allocations", "-rules", "rules.json"}, "contradicts -rules"},
		{[]string{"replay", "-apply", "-rules", "/nonexistent/rules.json"}, "-rules"},
		{[]string{"replay", "-since", "yesterday"}, "-since"},
		{[]string{"replay", "-since", "1h", "-until", "2h"}, "Until"},
		{[]string{"replay", "-verify", "-cobo-env", "staging"}, "-cobo-env"},
		{[]string{"replay", "-verify"}, "-cobo-env dev|prod or -cobo-pubkey is required"},
		{[]string{"replay", "-apply", "-no-allocations"}, "-cobo-env dev|prod or -cobo-pubkey is required"},
		// No default trust: a deployment that forgets the flag stops here
		// instead of trusting Cobo's dev key.
		{[]string{"-nats-url", "nats://127.0.0.1:1"}, "-cobo-env dev|prod or -cobo-pubkey is required"},
		{[]string{"replay", "-verify", "-cobo-pubkey", "zz"}, "-cobo-pubkey"},
		{[]string{"reconcile"}, "worker reconcile needs the workers' -rules and -cobo-api-secret-file"},
		{[]string{"reconcile", "extra"}, `unexpected argument "extra"`},
		{[]string{"reconcile", "-since", "yesterday", "-rules", "rules.json"}, "-since"},
		{[]string{"reconcile", "-since", "2999-01-01T00:00:00Z", "-rules", "rules.json"}, "in the future"},
		{[]string{"reconcile", "-since", "-2h", "-rules", "rules.json"}, "must not be negative"},
		{[]string{"reconcile", "-rules", "/nonexistent/rules.json"}, "-rules"},
		{[]string{"reconcile", "-rules", "/nonexistent/rules.json", "-reconcile-overlap", "-1h"}, "-reconcile-overlap must not be negative"},
		{[]string{"reconcile", "-dry-run=maybe"}, "dry-run"},
		{[]string{"-reconcile-every", "-1m", "-cobo-env", "dev"}, "-reconcile-every must not be negative (0 turns reconciliation off)"},
		{[]string{"-reconcile-overlap", "-1m", "-cobo-env", "dev"}, "-reconcile-overlap must not be negative"},
	}
	for _, c := range cases {
		var out bytes.Buffer
		err := run(context.Background(), c.args, noEnv, &out, io.Discard)
		require.ErrorContains(t, err, c.want, "%v", c.args)
	}

	// Rules without the API secret they come with.
	rules := filepath.Join(t.TempDir(), "rules.json")
	require.NoError(t, os.WriteFile(rules, []byte(`{"splits":[],"late_payments":"hold"}`), 0o600))
	var out bytes.Buffer
	require.ErrorContains(t, run(context.Background(), []string{"reconcile", "-rules", rules}, noEnv, &out, io.Discard), "-rules needs -cobo-api-secret-file")
	// A bad environment value names the variable.
	env := map[string]string{"PAYSTREAM_RECONCILE_EVERY": "often"}
	require.ErrorContains(t, run(context.Background(), []string{"-cobo-env", "dev"}, func(k string) string { return env[k] }, &out, io.Discard), "PAYSTREAM_RECONCILE_EVERY")
}

func TestReplayAndDLQCommands(t *testing.T) {
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	_, err := events.EnsureEventStream(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	_, err = events.EnsureDLQStream(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	signer := testutil.NewSigner(t)
	pub := events.NewPublisher(js)
	var bodies [][]byte
	for i, status := range []string{"Pending", "Completed"} {
		body := testutil.OrderEvent("O-cmd-"+status, "O-cmd", "M1001", status, int64(100*(i+1)), "0")
		env, err := cobo.ParseEnvelope(body)
		require.NoError(t, err)
		ts, sig := signer.Sign(body)
		_, err = pub.Store(ctx, cobo.Delivery{Envelope: env, Body: body, Timestamp: ts, Signature: sig, ReceivedAt: time.Now()})
		require.NoError(t, err)
		bodies = append(bodies, body)
	}
	url := srv.ClientURL()

	var out bytes.Buffer
	require.NoError(t, run(ctx, []string{"replay", "-nats-url", url, "-order", "O-cmd", "-verify", "-cobo-pubkey", signer.PubHex}, noEnv, &out, io.Discard))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 2)
	for i, l := range lines {
		var line map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(l), &line))
		require.Equal(t, "true", string(line["verified"]))
		require.Equal(t, bodies[i], []byte(line["event"]))
	}

	// The environment stands in for flags, as for the worker itself.
	env := map[string]string{"PAYSTREAM_NATS_URL": url}
	out.Reset()
	err = run(ctx, []string{"replay", "-type", cobo.EventOrderStatusUpdated, "-verify", "-cobo-env", "prod"}, func(k string) string { return env[k] }, &out, io.Discard)
	require.ErrorIs(t, err, replay.ErrVerifyFailed)
	require.Equal(t, 2, strings.Count(out.String(), `"verified":false`))

	// An empty result says so on stderr; stdout stays JSON lines only.
	var notes bytes.Buffer
	out.Reset()
	require.NoError(t, run(ctx, []string{"replay", "-nats-url", url, "-order", "O-none"}, noEnv, &out, &notes))
	require.Empty(t, out.String())
	require.Equal(t, "worker replay: no stored event matches the selection\n", notes.String())
	notes.Reset()
	require.NoError(t, run(ctx, []string{"dlq", "list", "-nats-url", url}, noEnv, &out, &notes))
	require.Empty(t, out.String())
	require.Equal(t, "worker dlq list: no dead letter matches the selection\n", notes.String())
	require.ErrorContains(t, run(ctx, []string{"dlq", "redrive", "-nats-url", url, "-seq", "1"}, noEnv, &out, io.Discard), "redriven already")
	notes.Reset()
	require.NoError(t, run(ctx, []string{"dlq", "redrive", "-nats-url", url, "-all"}, noEnv, &out, &notes))
	require.Empty(t, out.String())
	require.Contains(t, notes.String(), "worker dlq redrive: no dead letter matches the selection")
}

func TestRefusedWorkerNamesTheFlagsAndFile(t *testing.T) {
	dir := t.TempDir()
	creds, err := natsembed.LoadOrCreateCredentials(dir)
	require.NoError(t, err)
	srv, err := natsembed.Start(natsembed.Config{Listen: "127.0.0.1:0", StoreDir: dir, Credentials: creds})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	wrong := filepath.Join(t.TempDir(), "worker.password")
	require.NoError(t, os.WriteFile(wrong, []byte("not-the-password\n"), 0o600))

	var out bytes.Buffer
	err = run(context.Background(), []string{"-nats-url", srv.ClientURL(), "-nats-user", "worker", "-nats-password-file", wrong,
		"-cobo-env", "dev", "-metrics-listen", "-"}, noEnv, &out, io.Discard)
	require.ErrorIs(t, err, nats.ErrAuthorization)
	require.ErrorContains(t, err, `NATS refused user "worker" with the password in `+wrong+` (-nats-user, -nats-password-file)`)
	require.ErrorContains(t, err, "credentials/<user>.password")
	require.NotContains(t, err.Error(), "not-the-password", "the password is never echoed")
}

// TestWorkerStartsBeforeIngest starts a worker, as the one-machine setup
// runs it, before ingest exists: it waits for the password file ingest
// writes and for NATS, then works.
func TestWorkerStartsBeforeIngest(t *testing.T) {
	dir, natsAddr, metricsAddr := t.TempDir(), testutil.FreePort(t), testutil.FreePort(t)
	signer := testutil.NewSigner(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs testutil.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-nats-url", "nats://" + natsAddr, "-nats-user", "worker",
			"-nats-password-file", natsembed.PasswordFile(dir, natsembed.UserWorker), "-cobo-pubkey", signer.PubHex,
			"-metrics-listen", metricsAddr, "-connect-wait", "1m"}, noEnv, &logs, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "waiting for the NATS password file") },
		10*time.Second, 10*time.Millisecond, logs.String())

	ing, err := ingest.Start(context.Background(), ingest.Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		NATSListen: natsAddr, DataDir: dir, CoboPubKeys: []string{signer.PubHex}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ing.Shutdown(context.Background()) })
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, logs.String())

	body := testutil.OrderEvent("e-first", "O-first", "M1001", "Pending", 100, "0")
	resp, err := http.DefaultClient.Do(signer.Request(t, "http://"+ing.PublicAddr()+ingest.WebhookPath, body))
	require.NoError(t, err)
	resp.Body.Close()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + ing.AdminAddr() + "/v1/orders/O-first")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the worker applies the event")
}
