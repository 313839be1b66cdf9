package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestPrintWebhookPubKey(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"-print-webhook-pubkey"}, env(nil), &out))
	want := sandbox.WebhookPubKeyHex(sandbox.DefaultWebhookSeed)
	require.Equal(t, want+"\n", out.String())

	out.Reset()
	require.NoError(t, run(context.Background(), []string{"-print-webhook-pubkey"}, env(map[string]string{"PAYSTREAM_SANDBOX_WEBHOOK_SEED": "other"}), &out))
	require.NotEqual(t, want+"\n", out.String())
	require.Len(t, strings.TrimSpace(out.String()), 64)
}

// TestBadOptions: every bad flag or environment value fails before
// anything is served, with an error naming the flag (or variable).
func TestBadOptions(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"duplicates above 1":   {args: []string{"-duplicates", "1.5"}, want: "-duplicates must be from 0 to 1"},
		"negative late ratio":  {args: []string{"-late-ratio", "-0.1"}, want: "-late-ratio must be from 0 to 1"},
		"negative orders":      {args: []string{"-orders", "-1"}, want: "-orders must not be negative"},
		"negative foreign":     {args: []string{"-foreign-orders", "-1"}, want: "-foreign-orders must not be negative"},
		"too many undelivered": {args: []string{"-orders", "3", "-undelivered-orders", "4"}, want: "-undelivered-orders must be from 0 to -orders (3)"},
		"negative rate":        {args: []string{"-rate", "-1"}, want: "-rate must not be negative"},
		"no concurrency":       {args: []string{"-concurrency", "-1"}, want: "-concurrency must be positive"},
		"no attempts":          {args: []string{"-max-attempts", "-2"}, want: "-max-attempts must be positive"},
		"webhook url":          {args: []string{"-webhook-url", "ftp://x"}, want: "-webhook-url must be an http(s) URL"},
		"empty webhook seed":   {args: []string{"-webhook-seed", ""}, want: "-webhook-seed must not be empty"},
		"bad env foreign":      {env: map[string]string{"PAYSTREAM_SANDBOX_FOREIGN_ORDERS": "some"}, want: "PAYSTREAM_SANDBOX_FOREIGN_ORDERS"},
		"bad api key":          {args: []string{"-api-pubkey", "abcd"}, want: "-api-pubkey"},
		"missing secret file":  {args: []string{"-api-secret-file", "/nonexistent/secret"}, want: "-api-secret-file"},
		"missing bitgo token":  {args: []string{"-bitgo-token-file", "/nonexistent/token"}, want: "-bitgo-token-file"},
		"missing bitgo key":    {args: []string{"-bitgo-signing-key-file", "/nonexistent/key"}, want: "-bitgo-signing-key-file"},
		"bad faults":           {args: []string{"-faults", "500:x"}, want: "-faults"},
		"bad bitgo faults":     {args: []string{"-bitgo-faults", "teleport"}, want: `-bitgo-faults: fault "teleport": unknown fault kind`},
		"bad cobo shape":       {args: []string{"-cobo-shape", "old"}, want: "-cobo-shape"},
		"bad seed":             {args: []string{"-seed", "minus-one"}, want: "-seed"},
		"bad env bool":         {env: map[string]string{"PAYSTREAM_SANDBOX_SHUFFLE": "maybe"}, want: "PAYSTREAM_SANDBOX_SHUFFLE"},
		"bad env float":        {env: map[string]string{"PAYSTREAM_SANDBOX_DUPLICATES": "lots"}, want: "PAYSTREAM_SANDBOX_DUPLICATES"},
		"bad env bitgo nonce":  {env: map[string]string{"PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE": "sometimes"}, want: "PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE"},
		"stray argument":       {args: []string{"extra"}, want: "unexpected arguments"},
		"unknown log level":    {args: []string{"-log-level", "loud", "-orders", "0"}, want: "log level"},
		"listen address taken": {args: []string{"-listen", busyAddr(t), "-orders", "0"}, want: "-listen 127.0.0.1:"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Every case fails before serving, so run returns on its own.
			require.ErrorContains(t, run(ctx, tc.args, env(tc.env), io.Discard), tc.want)
		})
	}
}

// TestFlagsIntoConfig: flags and their environment variables land in the
// sandbox's Config, faults parsed by the simulators' own parsers.
func TestFlagsIntoConfig(t *testing.T) {
	t.Parallel()
	p, err := parseFlags([]string{"-bitgo-faults", "drop:2,lose", "-faults", "500:2", "-seed", "7", "-orders", "9", "-undelivered-orders", "3"}, env(nil), io.Discard)
	require.NoError(t, err)
	require.False(t, p.cfg.BitGoNonceOnce, "nonces are reusable unless asked")
	require.False(t, p.cfg.BitGoReplayConflict)
	require.Equal(t, []bitgosim.Fault{{Kind: bitgosim.FaultDrop, Count: 2}, {Kind: bitgosim.FaultLoseResponse, Count: 1}}, p.cfg.BitGoFaults)
	require.Equal(t, []cobosim.Fault{{Method: http.MethodPost, PathPrefix: "/v2/payments/batch_allocations", Kind: cobosim.FaultError500, Count: 2}}, p.cfg.Faults)
	require.Equal(t, uint64(7), *p.cfg.Seed)
	require.Equal(t, 9, p.cfg.Orders)
	require.Equal(t, 3, p.cfg.UndeliveredOrders)
	require.True(t, p.cfg.Shuffle)
	require.True(t, p.cfg.KeepServing)
	require.Equal(t, sandbox.DefaultDuplicates, p.cfg.Duplicates)

	p, err = parseFlags([]string{"-bitgo-nonce-once", "-bitgo-replay-conflict"}, env(nil), io.Discard)
	require.NoError(t, err)
	require.True(t, p.cfg.BitGoNonceOnce)
	require.True(t, p.cfg.BitGoReplayConflict)
	require.Nil(t, p.cfg.Seed, "no -seed: one from the clock")

	p, err = parseFlags(nil, env(map[string]string{"PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE": "true", "PAYSTREAM_SANDBOX_UNDELIVERED_ORDERS": "5"}), io.Discard)
	require.NoError(t, err)
	require.True(t, p.cfg.BitGoNonceOnce)
	require.Equal(t, 5, p.cfg.UndeliveredOrders)
}

// busyAddr returns a loopback address held by a listener for the test.
func busyAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func writeSecret(t *testing.T) (path string, signer *cobo.APISigner) {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	path = filepath.Join(t.TempDir(), "cobo-api-secret")
	require.NoError(t, os.WriteFile(path, []byte(hex.EncodeToString(seed)+"\n"), 0o600))
	signer, err = cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	return path, signer
}

// TestPlaysOrdersAndStops plays a few orders into a verifying endpoint and
// returns once they are played (-keep-serving=false).
func TestPlaysOrdersAndStops(t *testing.T) {
	verifier, err := cobo.NewVerifier(sandbox.WebhookPubKeyHex(sandbox.DefaultWebhookSeed))
	require.NoError(t, err)
	var ok, bad atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ts, sig := r.Header.Get(cobo.HeaderTimestamp), r.Header.Get(cobo.HeaderSignature)
		if ts == "" {
			ts, sig = r.Header.Get(cobo.HeaderTimestampAlt), r.Header.Get(cobo.HeaderSignatureAlt)
		}
		if verifier.Verify(body, ts, sig) != nil {
			bad.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ok.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(hook.Close)
	secretFile, _ := writeSecret(t)

	var out testutil.SyncBuffer
	err = run(context.Background(), []string{
		"-listen", "127.0.0.1:0", "-webhook-url", hook.URL, "-orders", "6", "-seed", "99", "-rate", "0",
		"-api-secret-file", secretFile, "-faults", "500:1,lose:1", "-keep-serving=false",
	}, env(nil), &out)
	require.NoError(t, err, out.String())
	require.Zero(t, bad.Load())
	require.Positive(t, ok.Load())

	var stats struct {
		Stats struct {
			Orders   int `json:"orders"`
			Accepted int `json:"accepted"`
			Failed   int `json:"failed"`
		} `json:"stats"`
	}
	for line := range strings.SplitSeq(out.String(), "\n") {
		if strings.Contains(line, `"payer stats"`) {
			require.NoError(t, json.Unmarshal([]byte(line), &stats))
		}
	}
	require.Equal(t, 6, stats.Stats.Orders, out.String())
	require.Equal(t, int(ok.Load()), stats.Stats.Accepted)
	require.Zero(t, stats.Stats.Failed)
	require.NotContains(t, out.String(), hex.EncodeToString(sandbox.WebhookKeyFromSeed(sandbox.DefaultWebhookSeed).Seed()))
	require.NotContains(t, out.String(), "was 401", "ingest trusts the key: no hint")
}

// TestHintsAtTheTrustedKey plays into an endpoint that answers every
// webhook 401, as ingest does when it does not trust the sandbox's key:
// the sandbox's log tells the operator which key to trust, and how.
func TestHintsAtTheTrustedKey(t *testing.T) {
	t.Parallel()
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(hook.Close)
	var out testutil.SyncBuffer
	err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-webhook-url", hook.URL, "-orders", "2", "-rate", "0",
		"-max-attempts", "1", "-keep-serving=false"}, env(nil), &out)
	require.NoError(t, err, out.String())
	require.Contains(t, out.String(), "every answer was 401: ingest does not trust the sandbox's webhook key; start ingest with -cobo-pubkey $(bin/sandbox -print-webhook-pubkey)")

	// Another seed's key is not what bin/sandbox prints: the hint names it.
	out = testutil.SyncBuffer{}
	err = run(context.Background(), []string{"-listen", "127.0.0.1:0", "-webhook-url", hook.URL, "-orders", "1", "-rate", "0",
		"-max-attempts", "1", "-keep-serving=false", "-webhook-seed", "other"}, env(nil), &out)
	require.NoError(t, err, out.String())
	require.Contains(t, out.String(), "start ingest with -cobo-pubkey "+sandbox.WebhookPubKeyHex("other"))
}
