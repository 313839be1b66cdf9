package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/testutil"
)

func TestConsoleFlagErrors(t *testing.T) {
	token := filepath.Join(t.TempDir(), "admin-token")
	require.NoError(t, os.WriteFile(token, []byte("secret\n"), 0o600))
	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"console"}, "-admin-token-file is required"},
		{[]string{"console", "-admin-token-file", empty}, "-admin-token-file"},
		{[]string{"console", "-admin-token-file", token}, "-cobo-env dev|prod or -cobo-pubkey is required"},
		{[]string{"console", "-admin-token-file", token, "-cobo-env", "dev", "-no-allocations", "-rules", "rules.json"}, "contradicts -rules"},
		{[]string{"console", "-admin-token-file", token, "-cobo-env", "dev", "-rules", "/nonexistent/rules.json"}, "-rules"},
		{[]string{"console", "-admin-token-file", token, "-cobo-env", "dev", "-refresh", "10ms", "-nats-url", "nats://127.0.0.1:1", "-connect-wait", "0s"}, "RefreshEvery"},
		{[]string{"console", "extra"}, `unexpected argument "extra"`},
	} {
		var out bytes.Buffer
		require.ErrorContains(t, run(context.Background(), c.args, noEnv, &out, &out), c.want, "%v", c.args)
	}
}

// TestConsoleCommand runs `worker console` against ingest's embedded
// JetStream as the operator user, with the flags the demo gives it, and
// stops it softly.
func TestConsoleCommand(t *testing.T) {
	signer := testutil.NewSigner(t)
	dir := t.TempDir()
	ing, err := ingest.Start(context.Background(), ingest.Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0",
		DataDir: dir, CoboPubKeys: []string{signer.PubHex}, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ing.Shutdown(context.Background()) })
	// The workers create the orders bucket; the console waits for it.
	nc, err := nats.Connect(ing.NATSURL(), ing.Credentials().Login(natsembed.UserWorker)...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = events.EnsureOrdersBucket(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)

	token := filepath.Join(dir, "admin-token")
	require.NoError(t, os.WriteFile(token, []byte("console-secret\n"), 0o600))
	listen := testutil.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"console", "-listen", listen, "-admin-token-file", token, "-nats-url", ing.NATSURL(),
			"-nats-user", natsembed.UserOperator, "-nats-password-file", natsembed.PasswordFile(dir, natsembed.UserOperator),
			"-cobo-pubkey", signer.PubHex, "-no-allocations", "-ingest-admin-url", "http://" + ing.AdminAddr(), "-log-level", "warn"}, noEnv, io.Discard, io.Discard)
	}()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond)
	req, err := http.NewRequest(http.MethodGet, "http://"+listen+"/api/v1/overview", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer console-secret")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("worker console did not stop")
	}
}
