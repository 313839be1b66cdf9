package cobosim_test

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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
)

const batchPath = "/v2/payments/batch_allocations"

// env is a simulator behind a loopback server plus a client key it trusts.
type env struct {
	sim    *cobosim.Sim
	srv    *httptest.Server
	signer *cobo.APISigner
	secret string
}

func newSigner(t *testing.T) (*cobo.APISigner, string) {
	t.Helper()
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	secret := hex.EncodeToString(seed)
	s, err := cobo.NewAPISigner(secret)
	require.NoError(t, err)
	return s, secret
}

func newEnv(t *testing.T, cfg cobosim.Config) *env {
	t.Helper()
	signer, secret := newSigner(t)
	cfg.APIKeys = append(cfg.APIKeys, signer.APIKey())
	cfg.Logger = zerolog.Nop()
	sim := cobosim.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &env{sim: sim, srv: srv, signer: signer, secret: secret}
}

// request builds a request signed over exactly what is sent.
func (e *env) request(t *testing.T, method, path, query string, body []byte) *http.Request {
	t.Helper()
	u := e.srv.URL + path
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	require.NoError(t, err)
	nonce := strconv.FormatInt(time.Now().UnixMilli(), 10)
	req.Header.Set(cobo.HeaderAPIKey, e.signer.APIKey())
	req.Header.Set(cobo.HeaderAPINonce, nonce)
	req.Header.Set(cobo.HeaderAPISignature, e.signer.Sign(method, path, nonce, query, body))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

type response struct {
	status int
	body   []byte
}

func send(t *testing.T, client *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{resp.StatusCode, b}
}

func (e *env) do(t *testing.T, method, path, query string, body []byte) response {
	t.Helper()
	return send(t, e.srv.Client(), e.request(t, method, path, query, body))
}

func apiErr(t *testing.T, r response) cobo.APIError {
	t.Helper()
	var out cobo.APIError
	require.NoError(t, json.Unmarshal(r.body, &out), string(r.body))
	require.NotEmpty(t, out.Message)
	require.NotEmpty(t, out.ErrorID)
	return out
}

func requireError(t *testing.T, r response, status, code int) {
	t.Helper()
	require.Equal(t, status, r.status, string(r.body))
	require.Equal(t, code, apiErr(t, r).Code, string(r.body))
}

func batchBody(t *testing.T, requestID string, dests ...string) []byte {
	t.Helper()
	if len(dests) == 0 {
		dests = []string{"M1001"}
	}
	req := cobo.CreateBatchAllocationRequest{RequestID: requestID}
	for _, d := range dests {
		req.AllocationParams = append(req.AllocationParams, cobo.AllocationParam{
			TokenID: "ETH_USDT", Amount: "12.345678", SourceAccount: "developer", DestinationAccount: d, Description: "late payment",
		})
	}
	b, err := json.Marshal(req)
	require.NoError(t, err)
	return b
}

func decodeBatch(t *testing.T, r response) cobo.BatchAllocation {
	t.Helper()
	var b cobo.BatchAllocation
	require.NoError(t, json.Unmarshal(r.body, &b), string(r.body))
	return b
}

func TestSignedCreateGetAndList(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	r := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-1", "M1001", "M1002"))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	created := decodeBatch(t, r)
	require.NotEmpty(t, created.BatchAllocationID)
	require.Equal(t, "req-1", created.RequestID)
	require.Equal(t, cobo.BatchCompleted, created.Status)
	require.Len(t, created.AllocationParams, 2)
	require.Empty(t, created.AllocationItems, "create answers a BatchAllocation, not the detail")
	require.Equal(t, e.signer.APIKey(), created.Initiator)
	// Timestamps are seconds: well below the millisecond range.
	require.Positive(t, int64(created.CreatedTimestamp))
	require.Less(t, int64(created.CreatedTimestamp), int64(1e11))

	r = e.do(t, http.MethodGet, batchPath+"/"+created.BatchAllocationID, "", nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	detail := decodeBatch(t, r)
	require.Empty(t, detail.AllocationParams)
	require.Len(t, detail.AllocationItems, 2)
	for _, it := range detail.AllocationItems {
		require.Equal(t, cobo.ItemCompleted, it.Status)
		require.Equal(t, created.BatchAllocationID, it.BatchAllocationID)
		require.NotEmpty(t, it.AllocationItemID)
		require.Equal(t, "12.345678", it.Amount)
	}

	// The query is part of the signature, exactly as sent.
	r = e.do(t, http.MethodGet, batchPath, "limit=1&request_id=req-1", nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	var list cobo.BatchAllocationList
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Data, 1)
	require.Equal(t, created.BatchAllocationID, list.Data[0].BatchAllocationID)
	require.Equal(t, 1, list.Pagination.TotalCount)

	r = e.do(t, http.MethodGet, batchPath, "request_id=nope", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.JSONEq(t, `{"data":[],"pagination":{"before":"","after":"","total_count":0}}`, string(r.body))

	r = e.do(t, http.MethodGet, batchPath+"/no-such-batch", "", nil)
	requireError(t, r, http.StatusNotFound, cobosim.CodeNotFound)

	batches := e.sim.Batches()
	require.Len(t, batches, 1)
	require.Len(t, batches[0].AllocationItems, 2)
	require.Len(t, batches[0].AllocationParams, 2)
	require.Len(t, e.sim.Items(), 2)
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	other, _ := newSigner(t)
	body := batchBody(t, "req-auth")

	tests := []struct {
		name   string
		modify func(*http.Request)
		code   int
	}{
		{"missing key", func(r *http.Request) { r.Header.Del(cobo.HeaderAPIKey) }, cobosim.CodeMissingHeaders},
		{"missing nonce", func(r *http.Request) { r.Header.Del(cobo.HeaderAPINonce) }, cobosim.CodeMissingHeaders},
		{"missing signature", func(r *http.Request) { r.Header.Del(cobo.HeaderAPISignature) }, cobosim.CodeMissingHeaders},
		{"unknown key", func(r *http.Request) { r.Header.Set(cobo.HeaderAPIKey, other.APIKey()) }, cobosim.CodeUnknownAPIKey},
		{"signed by another key", func(r *http.Request) {
			r.Header.Set(cobo.HeaderAPISignature, other.Sign(r.Method, r.URL.Path, r.Header.Get(cobo.HeaderAPINonce), "", body))
		}, cobosim.CodeBadSignature},
		{"nonce changed", func(r *http.Request) { r.Header.Set(cobo.HeaderAPINonce, "1") }, cobosim.CodeBadSignature},
		{"signature not hex", func(r *http.Request) { r.Header.Set(cobo.HeaderAPISignature, "zz") }, cobosim.CodeBadSignature},
		{"path without /v2 signed", func(r *http.Request) {
			nonce := r.Header.Get(cobo.HeaderAPINonce)
			r.Header.Set(cobo.HeaderAPISignature, e.signer.Sign(r.Method, "/payments/batch_allocations", nonce, "", body))
		}, cobosim.CodeBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := e.request(t, http.MethodPost, batchPath, "", body)
			tt.modify(req)
			requireError(t, send(t, e.srv.Client(), req), http.StatusUnauthorized, tt.code)
		})
	}

	t.Run("body changed after signing", func(t *testing.T) {
		req := e.request(t, http.MethodPost, batchPath, "", body)
		tampered := bytes.Replace(body, []byte("12.345678"), []byte("99.345678"), 1)
		req.Body = io.NopCloser(bytes.NewReader(tampered))
		req.ContentLength = int64(len(tampered))
		requireError(t, send(t, e.srv.Client(), req), http.StatusUnauthorized, cobosim.CodeBadSignature)
	})
	t.Run("query re-ordered after signing", func(t *testing.T) {
		req := e.request(t, http.MethodGet, batchPath, "limit=1&request_id=x", nil)
		req.URL.RawQuery = "request_id=x&limit=1"
		requireError(t, send(t, e.srv.Client(), req), http.StatusUnauthorized, cobosim.CodeBadSignature)
	})
	t.Run("no keys configured", func(t *testing.T) {
		sim := cobosim.New(cobosim.Config{Logger: zerolog.Nop()})
		srv := httptest.NewServer(sim)
		t.Cleanup(srv.Close)
		req := e.request(t, http.MethodPost, batchPath, "", body)
		req.URL.Host = strings.TrimPrefix(srv.URL, "http://")
		requireError(t, send(t, srv.Client(), req), http.StatusUnauthorized, cobosim.CodeUnknownAPIKey)
	})

	require.Empty(t, e.sim.Batches())
	require.Equal(t, len(tests)+2, e.sim.State().AuthFailures)
}

func TestContentTypeAndRouting(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	req := e.request(t, http.MethodPost, batchPath, "", batchBody(t, "req-ct"))
	req.Header.Set("Content-Type", "text/plain")
	requireError(t, send(t, e.srv.Client(), req), http.StatusNotAcceptable, cobosim.CodeInvalidParameter)

	req = e.request(t, http.MethodPost, batchPath, "", batchBody(t, "req-ct"))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	require.Equal(t, http.StatusCreated, send(t, e.srv.Client(), req).status)

	requireError(t, e.do(t, http.MethodGet, "/v2/payments/nothing", "", nil), http.StatusNotFound, cobosim.CodeNoSuchEndpoint)
	requireError(t, e.do(t, http.MethodDelete, batchPath, "", nil), http.StatusNotFound, cobosim.CodeNoSuchEndpoint)
	requireError(t, send(t, e.srv.Client(), mustRequest(t, http.MethodGet, e.srv.URL+"/other", nil)), http.StatusNotFound, cobosim.CodeNoSuchEndpoint)
}

func mustRequest(t *testing.T, method, url string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	return req
}

func TestCreateValidation(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	param := func(fields string) string {
		return `{"request_id":"r","allocation_params":[` + fields + `]}`
	}
	full := `"token_id":"ETH_USDT","source_account":"developer","destination_account":"M1001","description":"d"`
	tests := []struct {
		name string
		body string
		code int
	}{
		{"not json", `{`, cobosim.CodeInvalidParameter},
		{"trailing data", `{"request_id":"r","allocation_params":[]} {}`, cobosim.CodeInvalidParameter},
		{"no request_id", `{"allocation_params":[{` + full + `,"amount":"1"}]}`, cobosim.CodeMissingParameter},
		{"empty request_id", `{"request_id":"","allocation_params":[{` + full + `,"amount":"1"}]}`, cobosim.CodeMissingParameter},
		{"no params", `{"request_id":"r","allocation_params":[]}`, cobosim.CodeMissingParameter},
		{"no amount", param(`{` + full + `}`), cobosim.CodeMissingParameter},
		{"no token", param(`{"amount":"1","source_account":"developer","destination_account":"M1001","description":"d"}`), cobosim.CodeMissingParameter},
		{"no description", param(`{"amount":"1","token_id":"ETH_USDT","source_account":"developer","destination_account":"M1001"}`), cobosim.CodeMissingParameter},
		{"numeric amount", param(`{` + full + `,"amount":1}`), cobosim.CodeInvalidParameter},
		{"zero amount", param(`{` + full + `,"amount":"0.00"}`), cobosim.CodeInvalidAmount},
		{"negative amount", param(`{` + full + `,"amount":"-1"}`), cobosim.CodeInvalidAmount},
		{"exponent amount", param(`{` + full + `,"amount":"1e2"}`), cobosim.CodeInvalidAmount},
		{"word amount", param(`{` + full + `,"amount":"ten"}`), cobosim.CodeInvalidAmount},
		{"same accounts", param(`{"amount":"1","token_id":"ETH_USDT","source_account":"M1001","destination_account":"M1001","description":"d"}`), cobosim.CodeInvalidParameter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireError(t, e.do(t, http.MethodPost, batchPath, "", []byte(tt.body)), http.StatusBadRequest, tt.code)
		})
	}
	require.Empty(t, e.sim.Batches())
	// An empty description is present, so it is accepted.
	r := e.do(t, http.MethodPost, batchPath, "", []byte(param(`{"amount":"0.000001","token_id":"ETH_USDT","source_account":"developer","destination_account":"M1001","description":""}`)))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
}

func TestDuplicateRequestID(t *testing.T) {
	for _, code := range []int{0, 12009, 2040, 30001} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			e := newEnv(t, cobosim.Config{DuplicateCode: code})
			want := code
			if want == 0 {
				want = cobosim.DefaultDuplicateCode
			}
			first := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-dup"))
			require.Equal(t, http.StatusCreated, first.status)
			// A different body with the same request_id is still a duplicate.
			second := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-dup", "M1002"))
			requireError(t, second, http.StatusBadRequest, want)
			ae := apiErr(t, second)
			require.Equal(t, cobosim.DuplicateRequestMessage, ae.Message)
			ae.HTTPStatus = second.status
			require.True(t, ae.DuplicateRequest(), "the client must recognise code %d", want)
			require.Len(t, e.sim.Batches(), 1)
			require.Equal(t, "M1001", e.sim.Batches()[0].AllocationItems[0].DestinationAccount)
			require.Equal(t, 1, e.sim.State().DuplicateRequests)
		})
	}
}

func TestConcurrentSameRequestIDRecordsOnce(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	const n = 10
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		req := e.request(t, http.MethodPost, batchPath, "", batchBody(t, "req-race"))
		wg.Go(func() {
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[i] = resp.StatusCode
		})
	}
	wg.Wait()
	created, dup := 0, 0
	for _, s := range statuses {
		switch s {
		case http.StatusCreated:
			created++
		case http.StatusBadRequest:
			dup++
		}
	}
	require.Equal(t, 1, created)
	require.Equal(t, n-1, dup)
	require.Len(t, e.sim.Batches(), 1)
	require.Len(t, e.sim.Items(), 1)
}

func TestFaults(t *testing.T) {
	t.Run("500 does not record", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultError500})
		requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")), http.StatusInternalServerError, cobosim.CodeInternal)
		require.Empty(t, e.sim.Batches())
		require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status, "the fault is used up")
		require.Len(t, e.sim.Batches(), 1)
	})
	t.Run("rate limit does not record", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Kind: cobosim.FaultRateLimit, Count: 2})
		requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")), http.StatusTooManyRequests, cobosim.CodeRateLimited)
		requireError(t, e.do(t, http.MethodGet, batchPath, "", nil), http.StatusTooManyRequests, cobosim.CodeRateLimited)
		require.Empty(t, e.sim.Batches())
		require.Equal(t, http.StatusOK, e.do(t, http.MethodGet, batchPath, "", nil).status)
	})
	t.Run("lost response records the batch", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, Kind: cobosim.FaultLoseResponse})
		r := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r-lost"))
		require.Equal(t, http.StatusBadGateway, r.status)
		require.Contains(t, string(r.body), "<html>")
		require.Len(t, e.sim.Batches(), 1)
		// The retry learns that the batch exists.
		requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r-lost")), http.StatusBadRequest, cobosim.DefaultDuplicateCode)
		require.Len(t, e.sim.Batches(), 1)
	})
	t.Run("timeout records the batch and the client times out", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, Kind: cobosim.FaultTimeout, Delay: time.Hour})
		client := &http.Client{Timeout: 100 * time.Millisecond}
		_, err := client.Do(e.request(t, http.MethodPost, batchPath, "", batchBody(t, "r-timeout")))
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout())
		require.Len(t, e.sim.Batches(), 1)
	})
	t.Run("timeout answers after the delay when the client waits", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, Kind: cobosim.FaultTimeout, Delay: time.Millisecond})
		require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
	})
	t.Run("slow processes normally", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Kind: cobosim.FaultSlow, Delay: 5 * time.Millisecond})
		require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
		require.Len(t, e.sim.Batches(), 1)
	})
	t.Run("faults match method and path, in order", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultError500, Count: 2})
		e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultRateLimit})
		require.Equal(t, http.StatusOK, e.do(t, http.MethodGet, batchPath, "", nil).status, "GET does not match")
		require.Equal(t, http.StatusNotFound, e.do(t, http.MethodGet, "/v2/payments/orders/x", "", nil).status)
		require.Len(t, e.sim.State().PendingFaults, 2)
		require.Equal(t, http.StatusInternalServerError, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
		require.Equal(t, http.StatusInternalServerError, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
		require.Equal(t, http.StatusTooManyRequests, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
		require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)
		st := e.sim.State()
		require.Empty(t, st.PendingFaults)
		require.Equal(t, 3, st.FaultsApplied)
	})
	t.Run("unauthenticated requests do not use faults", func(t *testing.T) {
		e := newEnv(t, cobosim.Config{})
		e.sim.InjectFault(cobosim.Fault{Kind: cobosim.FaultError500})
		req := e.request(t, http.MethodPost, batchPath, "", batchBody(t, "r"))
		req.Header.Del(cobo.HeaderAPISignature)
		requireError(t, send(t, e.srv.Client(), req), http.StatusUnauthorized, cobosim.CodeMissingHeaders)
		require.Len(t, e.sim.State().PendingFaults, 1)
	})
}

func TestOperatorEndpoints(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	r := send(t, e.srv.Client(), jsonRequest(t, http.MethodPost, e.srv.URL+"/sandbox/faults", `{"method":"post","path_prefix":"/v2/payments/batch_allocations","kind":"500","count":1}`))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	r = send(t, e.srv.Client(), jsonRequest(t, http.MethodPost, e.srv.URL+"/sandbox/faults", `{"kind":"slow","delay":"1ms"}`))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	r = send(t, e.srv.Client(), jsonRequest(t, http.MethodPost, e.srv.URL+"/sandbox/faults", `{"kind":"explode"}`))
	require.Equal(t, http.StatusBadRequest, r.status)
	r = send(t, e.srv.Client(), jsonRequest(t, http.MethodPost, e.srv.URL+"/sandbox/faults", `{"kind":"slow","delay":"soon"}`))
	require.Equal(t, http.StatusBadRequest, r.status)

	requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")), http.StatusInternalServerError, cobosim.CodeInternal)
	require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "r")).status)

	r = send(t, e.srv.Client(), mustRequest(t, http.MethodGet, e.srv.URL+"/sandbox/state", nil))
	require.Equal(t, http.StatusOK, r.status)
	var st cobosim.State
	require.NoError(t, json.Unmarshal(r.body, &st))
	require.Equal(t, 1, st.Batches)
	require.Equal(t, 1, st.Items)
	require.Equal(t, 2, st.FaultsApplied)
	require.Equal(t, 2, st.Requests)
	require.Empty(t, st.PendingFaults)

	e.sim.InjectFault(cobosim.Fault{Kind: cobosim.FaultError500})
	r = send(t, e.srv.Client(), mustRequest(t, http.MethodDelete, e.srv.URL+"/sandbox/faults", nil))
	require.Equal(t, http.StatusOK, r.status)
	require.Empty(t, e.sim.State().PendingFaults)
}

func jsonRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req := mustRequest(t, method, url, []byte(body))
	req.Header.Set("Content-Type", "application/json")
	return req
}

func TestItemFailure(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	e.sim.SetItemFailure("M1002")
	r := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "partial", "M1001", "M1002"))
	require.Equal(t, http.StatusCreated, r.status)
	require.Equal(t, cobo.BatchPartiallyCompleted, decodeBatch(t, r).Status)
	r = e.do(t, http.MethodPost, batchPath, "", batchBody(t, "failed", "M1002"))
	require.Equal(t, cobo.BatchFailed, decodeBatch(t, r).Status)

	byReq := map[string]cobo.BatchAllocation{}
	for _, b := range e.sim.Batches() {
		byReq[b.RequestID] = b
	}
	items := byReq["partial"].AllocationItems
	require.Equal(t, cobo.ItemCompleted, items[0].Status)
	require.Equal(t, cobo.ItemFailed, items[1].Status)
	require.Equal(t, cobo.ItemFailed, byReq["failed"].AllocationItems[0].Status)

	r = e.do(t, http.MethodGet, "/v2/payments/allocation_items", "destination_account=M1002", nil)
	require.Equal(t, http.StatusOK, r.status)
	var list struct {
		Data []cobo.AllocationItem `json:"data"`
	}
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Data, 2)
}

func TestPagination(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	for _, id := range []string{"a", "b", "c"} {
		require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, id)).status)
	}
	list := func(query string) cobo.BatchAllocationList {
		t.Helper()
		r := e.do(t, http.MethodGet, batchPath, query, nil)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		var l cobo.BatchAllocationList
		require.NoError(t, json.Unmarshal(r.body, &l))
		return l
	}
	first := list("limit=2")
	require.Equal(t, []string{"c", "b"}, requestIDs(first.Data), "newest first")
	require.Equal(t, 3, first.Pagination.TotalCount)
	require.Empty(t, first.Pagination.Before)
	require.Equal(t, first.Data[1].BatchAllocationID, first.Pagination.After)
	second := list("after=" + first.Pagination.After + "&limit=2")
	require.Equal(t, []string{"a"}, requestIDs(second.Data))
	require.Empty(t, second.Pagination.After)
	back := list("before=" + second.Pagination.Before + "&limit=1")
	require.Equal(t, []string{"b"}, requestIDs(back.Data))

	requireError(t, e.do(t, http.MethodGet, batchPath, "limit=51", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
	requireError(t, e.do(t, http.MethodGet, batchPath, "limit=0", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
	requireError(t, e.do(t, http.MethodGet, batchPath, "after=nope", nil), http.StatusBadRequest, cobosim.CodeInvalidParameter)
}

func requestIDs(bs []cobo.BatchAllocation) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.RequestID)
	}
	return out
}

func TestOrders(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	amt := func(s string) cobo.Amount {
		return cobo.Amount{NullDecimal: decimal.NewNullDecimal(decimal.RequireFromString(s))}
	}
	o := cobo.OrderData{
		DataType: "PaymentOrder", OrderID: "O20260101-M1001-1001", MerchantID: "M1001", PSPOrderCode: "P-1",
		PayableCurrency: "ETH_USDT", PayableAmount: amt("102.00"), FeeAmount: amt("2.00"),
		ReceivedTokenAmount: amt("102.000001"), Status: "Completed", UpdatedTimestamp: 1700000000,
	}
	e.sim.PutOrder(o)
	r := e.do(t, http.MethodGet, "/v2/payments/orders/"+o.OrderID, "", nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	var got cobo.OrderData
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "Completed", got.Status)
	require.Empty(t, got.DataType)
	require.Equal(t, "102.000001", got.ReceivedTokenAmount.Decimal.String())
	require.Equal(t, 1, e.sim.State().Orders)

	requireError(t, e.do(t, http.MethodGet, "/v2/payments/orders/O-unknown", "", nil), http.StatusNotFound, cobosim.CodeNotFound)

	body := []byte(`{"merchant_id":"M1002","psp_order_code":"P-2","pricing_currency":"USD","pricing_amount":"100.00","payable_currency":"TRON_USDT","fee_amount":"2.50"}`)
	r = e.do(t, http.MethodPost, "/v2/payments/orders", "", body)
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "Pending", got.Status)
	require.Equal(t, "TRON", got.ChainID)
	require.Equal(t, "102.5", got.PayableAmount.Decimal.String())
	require.Contains(t, got.OrderID, "-M1002-")
	r = e.do(t, http.MethodGet, "/v2/payments/orders/"+got.OrderID, "", nil)
	require.Equal(t, http.StatusOK, r.status)

	requireError(t, e.do(t, http.MethodPost, "/v2/payments/orders", "", body), http.StatusBadRequest, cobosim.CodeAlreadyExists)
	requireError(t, e.do(t, http.MethodPost, "/v2/payments/orders", "", []byte(`{"merchant_id":"M1","psp_order_code":"P-3","payable_currency":"ETH_USDT"}`)), http.StatusBadRequest, cobosim.CodeMissingParameter)
	requireError(t, e.do(t, http.MethodPost, "/v2/payments/orders", "", []byte(`{"merchant_id":"M1","psp_order_code":"P-3","payable_currency":"ETH_USDT","fee_amount":"1","pricing_currency":"USD","pricing_amount":"5","payable_amount":"6"}`)), http.StatusBadRequest, cobosim.CodeInvalidParameter)
}

// TestClientIdempotencyAgainstFaults drives paystream's own Cobo client
// through lost responses and errors: each create ends with exactly one batch.
func TestClientIdempotencyAgainstFaults(t *testing.T) {
	for _, codeFaults := range []struct {
		name   string
		faults []cobosim.Fault
	}{
		{"lost response", []cobosim.Fault{{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultLoseResponse}}},
		{"errors then success", []cobosim.Fault{{Kind: cobosim.FaultError500, Count: 2}, {Kind: cobosim.FaultRateLimit}}},
		{"timeout", []cobosim.Fault{{Method: http.MethodPost, Kind: cobosim.FaultTimeout, Delay: time.Hour}}},
	} {
		t.Run(codeFaults.name, func(t *testing.T) {
			e := newEnv(t, cobosim.Config{DuplicateCode: 2040})
			for _, f := range codeFaults.faults {
				e.sim.InjectFault(f)
			}
			signer, err := cobo.NewAPISigner(e.secret)
			require.NoError(t, err)
			client, err := cobo.NewClient(cobo.ClientConfig{
				BaseURL: e.srv.URL + "/v2", Signer: signer,
				Config: httpretry.Config{MaxAttempts: 5, BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond, AttemptTimeout: 200 * time.Millisecond},
			})
			require.NoError(t, err)
			var req cobo.CreateBatchAllocationRequest
			require.NoError(t, json.Unmarshal(batchBody(t, "req-client"), &req))
			b, err := client.CreateBatchAllocation(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, "req-client", b.RequestID)
			batches := e.sim.Batches()
			require.Len(t, batches, 1)
			require.Equal(t, batches[0].BatchAllocationID, b.BatchAllocationID)
		})
	}
}

func TestParseFaultList(t *testing.T) {
	fs, err := cobosim.ParseFaultList("500:2, lose ,slow:1:3s,429", http.MethodPost, batchPath)
	require.NoError(t, err)
	require.Equal(t, []cobosim.Fault{
		{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultError500, Count: 2},
		{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultLoseResponse, Count: 1},
		{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultSlow, Count: 1, Delay: 3 * time.Second},
		{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultRateLimit, Count: 1},
	}, fs)
	fs, err = cobosim.ParseFaultList("", "", "")
	require.NoError(t, err)
	require.Empty(t, fs)
	for _, bad := range []string{"boom", "500:0", "500:x", "slow:1:never", "500:1:1s:extra"} {
		_, err := cobosim.ParseFaultList(bad, "", "")
		require.Error(t, err, bad)
	}
	_, err = cobosim.ParseFaultKind("nope")
	require.Error(t, err)
}

// TestForeignOrders: a recorded foreign order stays unknown to the API
// (404 in Cobo's error shape, like any unknown order), is not counted as
// an order, and items naming it are found for tests.
func TestForeignOrders(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	ours, theirs := "O20260315-M1001-123450001", "O20260315-M1001-543210001"
	e.sim.PutOrder(cobo.OrderData{OrderID: ours, MerchantID: "M1001", Status: "Completed"})
	e.sim.RecordForeignOrder(theirs)
	e.sim.RecordForeignOrder(theirs)
	e.sim.RecordForeignOrder("O20260315-M1002-543210002")
	require.Equal(t, []string{theirs, "O20260315-M1002-543210002"}, e.sim.ForeignOrderIDs())

	r := e.do(t, http.MethodGet, "/v2/payments/orders/"+ours, "", nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	for _, id := range []string{theirs, "O-never-seen"} {
		r := e.do(t, http.MethodGet, "/v2/payments/orders/"+id, "", nil)
		requireError(t, r, http.StatusNotFound, cobosim.CodeNotFound)
		var body map[string]any
		require.NoError(t, json.Unmarshal(r.body, &body))
		require.Len(t, body, 3, "only error_code, error_message and error_id: %s", r.body)
		require.Equal(t, "Order not found: "+id, body["error_message"])
		require.NotEmpty(t, body["error_id"])
	}
	// A fault before the handler is not a lookup.
	e.sim.InjectFault(cobosim.Fault{Method: http.MethodGet, PathPrefix: "/v2/payments/orders/", Kind: cobosim.FaultError500})
	requireError(t, e.do(t, http.MethodGet, "/v2/payments/orders/"+theirs, "", nil), http.StatusInternalServerError, cobosim.CodeInternal)

	// A client that allocated for the foreign order anyway.
	batch := func(requestID string, descriptions ...string) []byte {
		req := cobo.CreateBatchAllocationRequest{RequestID: requestID}
		for _, d := range descriptions {
			req.AllocationParams = append(req.AllocationParams, cobo.AllocationParam{
				TokenID: "ETH_USDT", Amount: "1.5", SourceAccount: "M1001", DestinationAccount: "M9000", Description: d,
			})
		}
		b, err := json.Marshal(req)
		require.NoError(t, err)
		return b
	}
	r = e.do(t, http.MethodPost, batchPath, "", batch("r-1", "referral "+ours, "referral "+theirs, "late payment tx-9 for order "+theirs))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	foreign := e.sim.ForeignOrderItems()
	require.Len(t, foreign, 2)
	require.Equal(t, "referral "+theirs, foreign[0].Description)
	require.Equal(t, "late payment tx-9 for order "+theirs, foreign[1].Description)
	require.Len(t, e.sim.ItemsNaming(ours), 1)
	require.Empty(t, e.sim.ItemsNaming("O20260315-M1001-12345"), "a prefix of an id names nothing")

	st := e.sim.State()
	require.Equal(t, 1, st.Orders, "foreign orders are not orders of the API")
	require.Equal(t, 2, st.ForeignOrders)
	require.Equal(t, []string{theirs, "O20260315-M1002-543210002"}, st.ForeignOrderIDs)
	require.Equal(t, 1, st.ForeignOrderLookups)
	require.Equal(t, 3, st.Items)
	require.Equal(t, 2, st.ForeignOrderItems)

	// The same over HTTP, as the demo reads it; the list is never null.
	r = send(t, e.srv.Client(), mustRequest(t, http.MethodGet, e.srv.URL+"/sandbox/state", nil))
	require.Equal(t, http.StatusOK, r.status)
	var got cobosim.State
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, st, got)
	fresh := newEnv(t, cobosim.Config{})
	r = send(t, fresh.srv.Client(), mustRequest(t, http.MethodGet, fresh.srv.URL+"/sandbox/state", nil))
	require.Contains(t, string(r.body), `"foreign_order_ids":[]`)
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &m), string(raw))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestSeedShape: with ShapeSeed the batch endpoints answer exactly the
// fields of the reference seeds (000 create, 001 get by id), no status on
// batches or items anywhere, while the simulator keeps the statuses.
func TestSeedShape(t *testing.T) {
	e := newEnv(t, cobosim.Config{Shape: cobosim.ShapeSeed})
	e.sim.SetItemStatus("M1002", cobo.ItemTransferring)
	r := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-seed", "M1001", "M1002"))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	require.Equal(t, []string{"allocation_params", "batch_allocation_id", "created_timestamp", "initiator", "request_id", "updated_timestamp"}, keysOf(t, r.body))
	created := decodeBatch(t, r)
	require.Equal(t, []string{"amount", "description", "destination_account", "source_account", "token_id"}, keysOf(t, mustJSON(t, created.AllocationParams[0])))

	r = e.do(t, http.MethodGet, batchPath+"/"+created.BatchAllocationID, "", nil)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	require.Equal(t, []string{"allocation_items", "batch_allocation_id", "created_timestamp", "initiator", "request_id", "updated_timestamp"}, keysOf(t, r.body))
	var detail struct {
		Items []json.RawMessage `json:"allocation_items"`
	}
	require.NoError(t, json.Unmarshal(r.body, &detail))
	require.Len(t, detail.Items, 2)
	for _, it := range detail.Items {
		require.Equal(t, []string{"allocation_item_id", "amount", "batch_allocation_id", "description", "destination_account", "source_account", "token_id"}, keysOf(t, it))
	}

	for _, path := range []string{batchPath, "/v2/payments/allocation_items"} {
		r = e.do(t, http.MethodGet, path, "", nil)
		require.Equal(t, http.StatusOK, r.status, string(r.body))
		require.NotContains(t, string(r.body), `"status"`, path)
	}
	// The simulator still knows what happened to each item.
	require.Equal(t, cobo.BatchProcessing, e.sim.Batches()[0].Status)
	require.Equal(t, cobo.ItemTransferring, e.sim.Batches()[0].AllocationItems[1].Status)

	_, err := cobosim.ParseShape("seeds")
	require.Error(t, err)
	for in, want := range map[string]string{"": cobosim.ShapeCurrent, "current": cobosim.ShapeCurrent, "Seed": cobosim.ShapeSeed} {
		got, err := cobosim.ParseShape(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// TestItemStatusesSettle: items to a destination can be held Transferring,
// the batch is Processing meanwhile, and SettleItems finishes them.
func TestItemStatusesSettle(t *testing.T) {
	e := newEnv(t, cobosim.Config{})
	e.sim.SetItemStatus("M1002", cobo.ItemTransferring)
	created := decodeBatch(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-hold", "M1001", "M1002")))
	require.Equal(t, cobo.BatchProcessing, created.Status)
	require.Equal(t, 1, e.sim.SettleItems("M1002", cobo.ItemCompleted))
	detail := decodeBatch(t, e.do(t, http.MethodGet, batchPath+"/"+created.BatchAllocationID, "", nil))
	require.Equal(t, cobo.BatchCompleted, detail.Status)
	for _, it := range detail.AllocationItems {
		require.Equal(t, cobo.ItemCompleted, it.Status)
	}
	e.sim.SetItemStatus("M1002", "")
	require.Equal(t, cobo.BatchCompleted, decodeBatch(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-after", "M1002"))).Status)
	e.sim.SetItemFailure("M1002")
	require.Equal(t, cobo.BatchPartiallyCompleted, decodeBatch(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-part", "M1001", "M1002"))).Status)
}

// TestUnauthorizedAndPricingPlanFaults: unauthorized answers an authentic
// request 401 code 2023 without processing; pricing_plan answers 30001
// for a request_id never stored and the ordinary answer for a stored one.
func TestUnauthorizedAndPricingPlanFaults(t *testing.T) {
	e := newEnv(t, cobosim.Config{DuplicateCode: 12009})
	fs, err := cobosim.ParseFaultList("unauthorized:2,30001:2", http.MethodPost, batchPath)
	require.NoError(t, err)
	require.Equal(t, cobosim.FaultUnauthorized, fs[0].Kind)
	require.Equal(t, cobosim.FaultPricingPlan, fs[1].Kind)
	for _, f := range fs {
		e.sim.InjectFault(f)
	}
	for range 2 {
		requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-401")), http.StatusUnauthorized, cobosim.CodeBadSignature)
	}
	r := e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-30001"))
	requireError(t, r, http.StatusBadRequest, cobosim.CodePricingPlan)
	require.Equal(t, cobosim.PricingPlanMessage, apiErr(t, r).Message)
	require.Empty(t, e.sim.Batches(), "neither fault processes the request")
	r = e.do(t, http.MethodGet, batchPath, "request_id=req-30001", nil)
	require.JSONEq(t, `{"data":[],"pagination":{"before":"","after":"","total_count":0}}`, string(r.body), "no batch behind the 30001")

	e.sim.ClearFaults()
	require.Equal(t, http.StatusCreated, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-stored")).status)
	e.sim.InjectFault(cobosim.Fault{Method: http.MethodPost, PathPrefix: batchPath, Kind: cobosim.FaultPricingPlan})
	requireError(t, e.do(t, http.MethodPost, batchPath, "", batchBody(t, "req-stored")), http.StatusBadRequest, 12009)
	st := e.sim.State()
	require.Equal(t, 1, st.Batches)
	require.Equal(t, 4, st.FaultsApplied)
	require.Zero(t, st.AuthFailures, "the requests were authentic")

	// Over the operator endpoint, as the demo and an operator inject them.
	r = send(t, e.srv.Client(), mustRequest(t, http.MethodPost, e.srv.URL+"/sandbox/faults", []byte(`{"kind":"401","path_prefix":"/v2/payments/batch_allocations","count":1000000}`)))
	require.Equal(t, http.StatusCreated, r.status, string(r.body))
	requireError(t, e.do(t, http.MethodGet, batchPath, "request_id=req-stored", nil), http.StatusUnauthorized, cobosim.CodeBadSignature)
	r = send(t, e.srv.Client(), mustRequest(t, http.MethodDelete, e.srv.URL+"/sandbox/faults", nil))
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, http.StatusOK, e.do(t, http.MethodGet, batchPath, "request_id=req-stored", nil).status)
}
