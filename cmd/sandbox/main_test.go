package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestPrintWebhookPubKey(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"-print-webhook-pubkey"}, env(nil), &out))
	want := hex.EncodeToString(WebhookKeyFromSeed(DefaultWebhookSeed).Public().(ed25519.PublicKey))
	require.Equal(t, want+"\n", out.String())

	out.Reset()
	require.NoError(t, run(context.Background(), []string{"-print-webhook-pubkey"}, env(map[string]string{"PAYSTREAM_SANDBOX_WEBHOOK_SEED": "other"}), &out))
	require.NotEqual(t, want+"\n", out.String())
	require.Len(t, strings.TrimSpace(out.String()), 64)
}

func TestBadOptions(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
	}{
		"duplicates above 1":   {args: []string{"-duplicates", "1.5"}},
		"negative late ratio":  {args: []string{"-late-ratio", "-0.1"}},
		"negative orders":      {args: []string{"-orders", "-1"}},
		"negative foreign":     {args: []string{"-foreign-orders", "-1"}},
		"bad env foreign":      {env: map[string]string{"PAYSTREAM_SANDBOX_FOREIGN_ORDERS": "some"}},
		"bad api key":          {args: []string{"-api-pubkey", "abcd"}},
		"missing secret file":  {args: []string{"-api-secret-file", "/nonexistent/secret"}},
		"bad faults":           {args: []string{"-faults", "500:x"}},
		"bad cobo shape":       {args: []string{"-cobo-shape", "old"}},
		"bad seed":             {args: []string{"-seed", "minus-one"}},
		"bad env bool":         {env: map[string]string{"PAYSTREAM_SANDBOX_SHUFFLE": "maybe"}},
		"bad env float":        {env: map[string]string{"PAYSTREAM_SANDBOX_DUPLICATES": "lots"}},
		"stray argument":       {args: []string{"extra"}},
		"unknown log level":    {args: []string{"-log-level", "loud", "-orders", "0"}},
		"listen address taken": {args: []string{"-listen", busyAddr(t), "-orders", "0"}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Every case fails before serving, so run returns on its own.
			require.Error(t, run(ctx, tc.args, env(tc.env), io.Discard))
		})
	}
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
	pub := hex.EncodeToString(WebhookKeyFromSeed(DefaultWebhookSeed).Public().(ed25519.PublicKey))
	verifier, err := cobo.NewVerifier(pub)
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

	var out syncBuffer
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
	require.NotContains(t, out.String(), hex.EncodeToString(WebhookKeyFromSeed(DefaultWebhookSeed).Seed()))
}

// TestServesCoboAPI starts the sandbox with no orders and uses its API as
// the worker would: signed, with the faults given on the command line.
func TestServesCoboAPI(t *testing.T) {
	secretFile, signer := writeSecret(t)
	o, err := parseOptions([]string{"-listen", "127.0.0.1:0", "-orders", "0", "-api-secret-file", secretFile, "-faults", "500:1", "-duplicate-code", "30001"}, env(nil), io.Discard)
	require.NoError(t, err)
	sb, err := start(o, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sb.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
	})
	base := "http://" + sb.addr()

	post := func(body string) (int, cobo.APIError) {
		t.Helper()
		path := "/v2/payments/batch_allocations"
		nonce := strconv.FormatInt(time.Now().UnixMilli(), 10)
		req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(cobo.HeaderAPIKey, signer.APIKey())
		req.Header.Set(cobo.HeaderAPINonce, nonce)
		req.Header.Set(cobo.HeaderAPISignature, signer.Sign(http.MethodPost, path, nonce, "", []byte(body)))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var e cobo.APIError
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e
	}
	body := `{"request_id":"late-O1","allocation_params":[{"token_id":"ETH_USDT","amount":"1.5","source_account":"developer","destination_account":"M1001","description":"late payment"}]}`
	status, e := post(body)
	require.Equal(t, http.StatusInternalServerError, status, "the -faults 500 comes first")
	require.Equal(t, cobosim.CodeInternal, e.Code)
	status, _ = post(body)
	require.Equal(t, http.StatusCreated, status)
	status, e = post(body)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, 30001, e.Code)

	resp, err := http.Get(base + "/sandbox/state")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st cobosim.State
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	require.Equal(t, 1, st.Batches)
	require.Equal(t, 1, st.DuplicateRequests)
}

// TestSeedShapeAndScriptedRefusals starts the sandbox with -cobo-shape
// seed and -faults unauthorized:1,30001:1, as `make run DEMO_ARGS=...`
// passes them: the first POST is refused 401 code 2023, the second 30001
// with no batch behind it, the third creates a batch answered without any
// status field.
func TestSeedShapeAndScriptedRefusals(t *testing.T) {
	secretFile, signer := writeSecret(t)
	o, err := parseOptions([]string{"-listen", "127.0.0.1:0", "-orders", "0", "-api-secret-file", secretFile,
		"-faults", "unauthorized:1,30001:1", "-cobo-shape", "seed"}, env(nil), io.Discard)
	require.NoError(t, err)
	sb, err := start(o, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sb.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
	})
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: "http://" + sb.addr() + "/v2", Signer: signer, MaxAttempts: 1})
	require.NoError(t, err)
	body := `{"request_id":"r-seed","allocation_params":[{"token_id":"ETH_USDT","amount":"1.5","source_account":"developer","destination_account":"M1001","description":"late payment"}]}`
	post := func() (int, []byte) {
		t.Helper()
		path, nonce := "/v2/payments/batch_allocations", strconv.FormatInt(time.Now().UnixMilli(), 10)
		req, err := http.NewRequest(http.MethodPost, "http://"+sb.addr()+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(cobo.HeaderAPIKey, signer.APIKey())
		req.Header.Set(cobo.HeaderAPINonce, nonce)
		req.Header.Set(cobo.HeaderAPISignature, signer.Sign(http.MethodPost, path, nonce, "", []byte(body)))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	var e cobo.APIError
	status, raw := post()
	require.Equal(t, http.StatusUnauthorized, status)
	require.NoError(t, json.Unmarshal(raw, &e))
	require.Equal(t, cobosim.CodeBadSignature, e.Code)
	status, raw = post()
	require.Equal(t, http.StatusBadRequest, status)
	require.NoError(t, json.Unmarshal(raw, &e))
	require.Equal(t, cobosim.CodePricingPlan, e.Code)
	_, err = client.FindBatchAllocation(context.Background(), "r-seed")
	require.ErrorIs(t, err, cobo.ErrBatchNotFound, "no batch behind the 30001")
	status, raw = post()
	require.Equal(t, http.StatusCreated, status)
	require.NotContains(t, string(raw), `"status"`, "seed shape: no status on the batch")
	var b cobo.BatchAllocation
	require.NoError(t, json.Unmarshal(raw, &b))
	detail, err := client.GetBatchAllocation(context.Background(), b.BatchAllocationID)
	require.NoError(t, err)
	require.Len(t, detail.AllocationItems, 1)
	require.Empty(t, detail.Status)
	require.Empty(t, detail.AllocationItems[0].Status, "seed shape: no status on the items")
	require.Equal(t, 2, sb.state().FaultsApplied)
}

// TestPlaysForeignOrders plays our orders and a foreign customer's into a
// verifying endpoint: all verify with the sandbox's webhook key, and the
// order API answers ours 200 and theirs 404, as GET /sandbox/state lists.
func TestPlaysForeignOrders(t *testing.T) {
	verifier, err := cobo.NewVerifier(hex.EncodeToString(WebhookKeyFromSeed(DefaultWebhookSeed).Public().(ed25519.PublicKey)))
	require.NoError(t, err)
	var mu sync.Mutex
	seen := map[string]bool{}
	var bad int
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ts, sig := r.Header.Get(cobo.HeaderTimestamp), r.Header.Get(cobo.HeaderSignature)
		if ts == "" {
			ts, sig = r.Header.Get(cobo.HeaderTimestampAlt), r.Header.Get(cobo.HeaderSignatureAlt)
		}
		env, perr := cobo.ParseEnvelope(body)
		mu.Lock()
		defer mu.Unlock()
		if verifier.Verify(body, ts, sig) != nil || perr != nil {
			bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		seen[env.OrderID] = true
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(hook.Close)
	secretFile, signer := writeSecret(t)
	// Two random hex secrets: the BitGo token and signing key.
	tokenFile, _ := writeSecret(t)
	keyFile, _ := writeSecret(t)
	o, err := parseOptions([]string{"-listen", "127.0.0.1:0", "-webhook-url", hook.URL, "-orders", "6", "-seed", "5", "-rate", "0",
		"-api-secret-file", secretFile, "-bitgo-token-file", tokenFile, "-bitgo-signing-key-file", keyFile},
		env(map[string]string{"PAYSTREAM_SANDBOX_FOREIGN_ORDERS": "4"}), io.Discard)
	require.NoError(t, err)
	require.Equal(t, 4, o.foreign)
	sb, err := start(o, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sb.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
	})
	base := "http://" + sb.addr()

	getState := func() State {
		t.Helper()
		resp, err := http.Get(base + "/sandbox/state")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var st State
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		return st
	}
	// Every order is registered or recorded before its first webhook, so
	// once all ten were seen the state is complete.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 10
	}, 20*time.Second, 20*time.Millisecond)
	st := getState()
	require.Equal(t, 6, st.Orders)
	require.Equal(t, 4, st.ForeignOrders)
	require.Len(t, st.ForeignOrderIDs, 4)
	require.Zero(t, st.ForeignOrderItems)
	require.Zero(t, st.BitGoAllocations)
	require.Zero(t, st.ForeignOrderBitGoAllocations)

	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: base + "/v2", Signer: signer, MaxAttempts: 1})
	require.NoError(t, err)
	foreign := map[string]bool{}
	for _, id := range st.ForeignOrderIDs {
		foreign[id] = true
	}
	mu.Lock()
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	require.Zero(t, bad, "every webhook, foreign ones included, verifies")
	mu.Unlock()
	for _, id := range ids {
		got, err := client.GetOrder(context.Background(), id)
		if !foreign[id] {
			require.NoError(t, err, "our order %s", id)
			require.Equal(t, id, got.OrderID)
			continue
		}
		var apiErr *cobo.APIError
		require.ErrorAs(t, err, &apiErr, "foreign order %s", id)
		require.Equal(t, http.StatusNotFound, apiErr.HTTPStatus)
		require.Equal(t, cobosim.CodeNotFound, apiErr.Code)
	}
	require.Equal(t, 4, getState().ForeignOrderLookups)

	// A PSP that allocates for a foreign order anyway shows in the state,
	// at Cobo and at BitGo.
	theirs := st.ForeignOrderIDs[0]
	_, err = client.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r-foreign",
		AllocationParams: []cobo.AllocationParam{
			{TokenID: "ETH_USDT", Amount: "1", SourceAccount: "M1001", DestinationAccount: "M9000", Description: "referral " + theirs},
			{TokenID: "ETH_USDT", Amount: "1", SourceAccount: "M1001", DestinationAccount: "M9000", Description: "referral O-ours"},
		}})
	require.NoError(t, err)
	token, err := os.ReadFile(tokenFile)
	require.NoError(t, err)
	rawKey, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	key, err := bitgo.ParseSigningKey(string(rawKey))
	require.NoError(t, err)
	bg, err := bitgo.New(bitgo.Config{BaseURL: base, EnterpriseID: DefaultBitGoEnterprise, AccessToken: strings.TrimSpace(string(token)),
		SigningKey: key, Currencies: bitgo.DefaultCurrencies(), MaxAttempts: 1})
	require.NoError(t, err)
	for i, notes := range []string{"settlement " + theirs, "settlement O-ours"} {
		req, err := bg.Prepare("conn-1", "ext-"+strconv.Itoa(i), "ETH_USDT", decimal.RequireFromString("2"), notes)
		require.NoError(t, err)
		_, err = bg.Send(context.Background(), req)
		require.NoError(t, err)
	}
	st = getState()
	require.Equal(t, 2, st.Items)
	require.Equal(t, 1, st.ForeignOrderItems)
	require.Equal(t, 2, st.BitGoAllocations)
	require.Equal(t, 1, st.ForeignOrderBitGoAllocations)
}
