package sandbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// serve starts a sandbox from cfg (a quiet logger unless cfg has one)
// and stops it when the test ends, requiring a clean stop.
func serve(t *testing.T, cfg sandbox.Config) *sandbox.Sandbox {
	t.Helper()
	sb, err := sandbox.Start(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sb.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
	})
	return sb
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

// TestServesCoboAPI starts the sandbox with no orders and uses its API as
// the worker would: signed, with the faults given on the command line.
func TestServesCoboAPI(t *testing.T) {
	secretFile, signer := writeSecret(t)
	sb := serve(t, sandbox.Config{Listen: "127.0.0.1:0", APISecretFile: secretFile, DuplicateCode: 30001,
		Faults: []cobosim.Fault{{Method: http.MethodPost, PathPrefix: "/v2/payments/batch_allocations", Kind: cobosim.FaultError500}}})
	base := "http://" + sb.Addr()

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
	faults, err := cobosim.ParseFaultList("unauthorized:1,30001:1", http.MethodPost, "/v2/payments/batch_allocations")
	require.NoError(t, err)
	sb := serve(t, sandbox.Config{Listen: "127.0.0.1:0", APISecretFile: secretFile, Faults: faults, CoboShape: cobosim.ShapeSeed})
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: "http://" + sb.Addr() + "/v2", Signer: signer,
		Config: httpretry.Config{MaxAttempts: 1}})
	require.NoError(t, err)
	body := `{"request_id":"r-seed","allocation_params":[{"token_id":"ETH_USDT","amount":"1.5","source_account":"developer","destination_account":"M1001","description":"late payment"}]}`
	post := func() (int, []byte) {
		t.Helper()
		path, nonce := "/v2/payments/batch_allocations", strconv.FormatInt(time.Now().UnixMilli(), 10)
		req, err := http.NewRequest(http.MethodPost, "http://"+sb.Addr()+path, strings.NewReader(body))
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
	require.Equal(t, 2, sb.State().FaultsApplied)
}

// TestPlaysForeignOrders plays our orders and a foreign customer's into a
// verifying endpoint: all verify with the sandbox's webhook key, and the
// order API answers ours 200 and theirs 404, as GET /sandbox/state lists.
func TestPlaysForeignOrders(t *testing.T) {
	verifier, err := cobo.NewVerifier(sandbox.WebhookPubKeyHex(sandbox.DefaultWebhookSeed))
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
	seed := uint64(5)
	sb := serve(t, sandbox.Config{Listen: "127.0.0.1:0", WebhookURL: hook.URL, Orders: 6, ForeignOrders: 4, Seed: &seed,
		Duplicates: sandbox.DefaultDuplicates, Shuffle: true, LateRatio: sandbox.DefaultLateRatio, KeepServing: true,
		APISecretFile: secretFile, BitGoTokenFile: tokenFile, BitGoSigningKeyFile: keyFile})
	base := "http://" + sb.Addr()

	getState := func() sandbox.State {
		t.Helper()
		resp, err := http.Get(base + "/sandbox/state")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var st sandbox.State
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

	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: base + "/v2", Signer: signer, Config: httpretry.Config{MaxAttempts: 1}})
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
	bg, err := bitgo.New(bitgo.Config{BaseURL: base, EnterpriseID: sandbox.DefaultBitGoEnterprise, AccessToken: strings.TrimSpace(string(token)),
		SigningKey: key, Currencies: bitgo.DefaultCurrencies(), Config: httpretry.Config{MaxAttempts: 1}})
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

// TestWarnsAboutKeysOnlyWhenCalled: a sandbox without Cobo API keys or
// BitGo credentials says nothing about them at start (it may only be
// sending webhooks), warns once at the first call of each API, and a
// sandbox with its keys never warns.
func TestWarnsAboutKeysOnlyWhenCalled(t *testing.T) {
	t.Parallel()
	var logs testutil.SyncBuffer
	sb := serve(t, sandbox.Config{Listen: "127.0.0.1:0", Logger: zerolog.New(&logs)})
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get("http://" + sb.Addr() + path)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, get("/sandbox/state"))
	// Serve logs it, and the bound listener may answer first.
	testutil.WaitFor(t, 5*time.Second, "the start line", func() bool { return strings.Contains(logs.String(), "sandbox listening") })
	require.NotContains(t, logs.String(), "API request arrived", "nothing called the APIs yet")

	require.Equal(t, http.StatusUnauthorized, get("/v2/payments/orders"))
	require.Equal(t, http.StatusUnauthorized, get("/v2/payments/orders"))
	require.Equal(t, 1, strings.Count(logs.String(), "a Cobo API request arrived but no API keys are configured (-api-pubkey or -api-secret-file)"), logs.String())
	require.NotContains(t, logs.String(), "BitGo API request arrived")

	path := "/api/network/v1/enterprises/" + sandbox.DefaultBitGoEnterprise + "/clients/allocations"
	require.Equal(t, http.StatusUnauthorized, get(path))
	require.Equal(t, http.StatusUnauthorized, get(path))
	require.Equal(t, 1, strings.Count(logs.String(), "a BitGo API request arrived but the sandbox has no -bitgo-token-file (every BitGo request gets 401) and no -bitgo-signing-key-file"), logs.String())

	var quiet testutil.SyncBuffer
	secretFile, _ := writeSecret(t)
	tokenFile, _ := writeSecret(t)
	keyFile, _ := writeSecret(t)
	sb = serve(t, sandbox.Config{Listen: "127.0.0.1:0", APISecretFile: secretFile, BitGoTokenFile: tokenFile, BitGoSigningKeyFile: keyFile,
		Logger: zerolog.New(&quiet)})
	require.Equal(t, http.StatusUnauthorized, get("/v2/payments/orders"), "unsigned")
	require.Equal(t, http.StatusUnauthorized, get(path), "no token")
	require.NotContains(t, quiet.String(), "API request arrived")
}

// TestConfigDefaultsAndFlagNames: WithDefaults fills the named defaults,
// and Start refuses a bad Config with an error naming the flag.
func TestConfigDefaultsAndFlagNames(t *testing.T) {
	t.Parallel()
	c := sandbox.Config{}.WithDefaults()
	require.Equal(t, sandbox.DefaultListen, c.Listen)
	require.Equal(t, sandbox.DefaultWebhookURL, c.WebhookURL)
	require.Equal(t, sandbox.DefaultWebhookSeed, c.WebhookSeed)
	require.Equal(t, sandbox.DefaultBitGoEnterprise, c.BitGoEnterpriseID)
	require.Equal(t, cobosim.DefaultDuplicateCode, c.DuplicateCode)
	require.Equal(t, cobosim.ShapeCurrent, c.CoboShape)
	require.NotEmpty(t, c.Merchants)
	require.Positive(t, c.Concurrency)
	require.Positive(t, c.MaxAttempts)

	for want, cfg := range map[string]sandbox.Config{
		"-undelivered-orders must be from 0 to -orders (2), got 3": {Orders: 2, UndeliveredOrders: 3},
		"-foreign-orders must not be negative":                     {ForeignOrders: -1},
		"-duplicates must be from 0 to 1":                          {Duplicates: 2},
		"-late-ratio must be from 0 to 1":                          {LateRatio: -1},
		"-rate must not be negative":                               {Rate: -3},
		"-cobo-shape must be current or seed":                      {CoboShape: "old"},
		"-webhook-url must be an http(s) URL":                      {WebhookURL: "127.0.0.1:8080"},
		`-api-pubkey: "xyz"`:                                       {APIPubKeys: []string{"xyz"}},
		"-api-secret-file":                                         {APISecretFile: filepath.Join(t.TempDir(), "none")},
	} {
		cfg.Listen = "127.0.0.1:0"
		_, err := sandbox.Start(cfg)
		require.ErrorContains(t, err, want)
	}
}
