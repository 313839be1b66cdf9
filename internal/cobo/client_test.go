package cobo_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/httpretry"
)

const testSecret = "0101010101010101010101010101010101010101010101010101010101010101"

func TestAPISignerRejectsMalformedSecrets(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "zz", "abcd", strings.Repeat("0", 63), strings.Repeat("0", 66)} {
		_, err := cobo.NewAPISigner(s)
		require.Error(t, err, s)
	}
	s, err := cobo.NewAPISigner(" " + testSecret + "\n")
	require.NoError(t, err)
	require.Len(t, s.APIKey(), 64)
}

func TestAPIStringToSign(t *testing.T) {
	t.Parallel()
	got := cobo.APIStringToSign("post", "/v2/payments/batch_allocations", "1718587017026", "", []byte(`{"request_id":"r"}`))
	require.Equal(t, `POST|/v2/payments/batch_allocations|1718587017026||{"request_id":"r"}`, string(got))
	got = cobo.APIStringToSign("GET", "/v2/payments/batch_allocations", "1", "limit=1&request_id=r", nil)
	require.Equal(t, `GET|/v2/payments/batch_allocations|1|limit=1&request_id=r|`, string(got))
}

// fakeCobo verifies every request's signature as Cobo would, then lets the
// test answer.
func fakeCobo(t *testing.T, signer *cobo.APISigner, answer func(w http.ResponseWriter, r *http.Request, body []byte)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		// The server knows only signer's key, as Cobo knows the registered one.
		err = cobo.VerifyAPIRequest(signer.APIKey(), r.Header.Get(cobo.HeaderAPISignature), r.Method, r.URL.EscapedPath(), r.Header.Get(cobo.HeaderAPINonce), r.URL.RawQuery, body)
		if err != nil || r.Header.Get(cobo.HeaderAPIKey) != signer.APIKey() {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error_code":2023,"error_message":"bad signature","error_id":"x"}`))
			return
		}
		answer(w, r, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, signer *cobo.APISigner, url string) *cobo.Client {
	t.Helper()
	c, err := cobo.NewClient(cobo.ClientConfig{BaseURL: url + "/v2", Signer: signer,
		Config: httpretry.Config{BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond, MaxAttempts: 4}})
	require.NoError(t, err)
	return c
}

func TestClientCreateBatchRetriesAndRecoversDuplicates(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	var posts atomic.Int32
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v2/payments/batch_allocations":
			require.Equal(t, "application/json", r.Header.Get("Content-Type"))
			var req cobo.CreateBatchAllocationRequest
			require.NoError(t, json.Unmarshal(body, &req))
			switch n := posts.Add(1); {
			case n == 1:
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`{"error_code":1000,"error_message":"internal","error_id":"e1"}`))
			case n == 2:
				w.WriteHeader(http.StatusBadGateway)
				_, _ = w.Write([]byte(`<html>bad gateway</html>`))
			default:
				// The earlier attempt was recorded after all.
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(`{"error_code":12009,"error_message":"Duplicate request ID","error_id":"e3"}`))
			}
		case r.Method == http.MethodGet && r.URL.Path == "/v2/payments/batch_allocations":
			require.Equal(t, "limit=50&request_id=req-1", r.URL.RawQuery)
			_, _ = w.Write([]byte(`{"data":[{"batch_allocation_id":"b1","request_id":"req-1","status":"Completed"}],"pagination":{"total_count":1}}`))
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	})
	c := newClient(t, signer, srv.URL)
	b, err := c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "req-1", AllocationParams: []cobo.AllocationParam{{TokenID: "ETH_USDT", Amount: "1.5", SourceAccount: "M1", DestinationAccount: "developer", Description: "d"}}})
	require.NoError(t, err)
	require.Equal(t, "b1", b.BatchAllocationID)
	require.EqualValues(t, 3, posts.Load())
}

func TestClientDoesNotRetryClientErrors(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	var calls atomic.Int32
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		calls.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error_code":30007,"error_message":"Invalid amount","error_id":"e"}`))
	})
	c := newClient(t, signer, srv.URL)
	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	var apiErr *cobo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 30007, apiErr.Code)
	require.False(t, apiErr.Retryable())
	require.EqualValues(t, 1, calls.Load())

}

func TestClientSignsWithItsOwnKey(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		_, _ = w.Write([]byte(`{"order_id":"O1","status":"Completed","payable_amount":"1.50"}`))
	})
	o, err := newClient(t, signer, srv.URL).GetOrder(context.Background(), "O1")
	require.NoError(t, err)
	require.Equal(t, "1.5", o.PayableAmount.Decimal.String())

	// Another key's signatures are refused, and a 401 is not retried.
	other, err := cobo.NewAPISigner(strings.Repeat("02", 32))
	require.NoError(t, err)
	_, err = newClient(t, other, srv.URL).GetOrder(context.Background(), "O1")
	var apiErr *cobo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 2023, apiErr.Code)
	require.NotContains(t, err.Error(), "attempts")
}

func TestClientRetriesRateLimitsAndGivesUp(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	var calls atomic.Int32
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		calls.Add(1)
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error_code":2010,"error_message":"rate limit","error_id":"e"}`))
	})
	_, err = newClient(t, signer, srv.URL).GetBatchAllocation(context.Background(), "b1")
	require.ErrorContains(t, err, "after 4 attempts")
	require.EqualValues(t, 4, calls.Load())
}

// TestClientMarksAnswersToRetries: a 4xx that follows a try without a
// definite answer says so (Retried), because the earlier try may have
// created the batch; a 4xx to the first try does not.
func TestClientMarksAnswersToRetries(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	var posts atomic.Int32
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if posts.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(`<html>bad gateway</html>`))
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error_code":2023,"error_message":"Missing or invalid API signature","error_id":"e"}`))
	})
	c := newClient(t, signer, srv.URL)
	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	var apiErr *cobo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatus)
	require.True(t, apiErr.Retried, "the 502 before may have hidden a created batch")
	require.True(t, apiErr.CredentialProblem())

	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	require.ErrorAs(t, err, &apiErr)
	require.False(t, apiErr.Retried, "answered on the first try")
}

// TestClientDuplicateCodeWithoutBatch: a code that may mean "request_id
// already used" is looked up; when Cobo lists nothing the error wraps
// Cobo's answer and ErrBatchNotFound, and when the lookup itself fails it
// does not wrap ErrBatchNotFound.
func TestClientDuplicateCodeWithoutBatch(t *testing.T) {
	t.Parallel()
	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	var list atomic.Value
	list.Store(`{"data":[],"pagination":{"total_count":0}}`)
	srv := fakeCobo(t, signer, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error_code":30001,"error_message":"The pricing plan does not support this feature","error_id":"e"}`))
			return
		}
		body := list.Load().(string)
		if strings.HasPrefix(body, "5") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(body))
	})
	c := newClient(t, signer, srv.URL)
	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	var apiErr *cobo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 30001, apiErr.Code, "errors.As finds the create's answer first")
	require.ErrorIs(t, err, cobo.ErrBatchNotFound)
	require.Contains(t, err.Error(), "pricing plan")

	// Cobo listing other request_ids proves nothing.
	list.Store(`{"data":[{"batch_allocation_id":"b9","request_id":"other"}],"pagination":{"total_count":1}}`)
	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	require.ErrorAs(t, err, &apiErr)
	require.NotErrorIs(t, err, cobo.ErrBatchNotFound)
	_, err = c.FindBatchAllocation(context.Background(), "r")
	require.NotErrorIs(t, err, cobo.ErrBatchNotFound)

	list.Store(`503 unavailable`)
	_, err = c.CreateBatchAllocation(context.Background(), cobo.CreateBatchAllocationRequest{RequestID: "r"})
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 30001, apiErr.Code)
	require.NotErrorIs(t, err, cobo.ErrBatchNotFound, "a failed lookup is not an answer")
}

func TestAPIErrorClasses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err                              cobo.APIError
		credential, endpoint, dup, retry bool
	}{
		{err: cobo.APIError{HTTPStatus: 401, Code: 2024}, credential: true},
		{err: cobo.APIError{HTTPStatus: 403, Code: 2025}, credential: true},
		{err: cobo.APIError{HTTPStatus: 400, Code: 2023}, credential: true},
		{err: cobo.APIError{HTTPStatus: 400, Code: 2006, Message: "Invalid Biz-Api-Nonce"}, credential: true},
		{err: cobo.APIError{HTTPStatus: 400, Code: 2006, Message: "source_account and destination_account are the same"}},
		{err: cobo.APIError{HTTPStatus: 400, Code: 30001}, dup: true},
		{err: cobo.APIError{HTTPStatus: 400, Code: 12009}, dup: true},
		{err: cobo.APIError{HTTPStatus: 409, Code: 2040}, dup: true},
		{err: cobo.APIError{HTTPStatus: 404, Code: 2021}, endpoint: true},
		{err: cobo.APIError{HTTPStatus: 404, Message: "<html>not found</html>"}, endpoint: true},
		{err: cobo.APIError{HTTPStatus: 404, Code: 2028, Message: "destination_account not found"}},
		{err: cobo.APIError{HTTPStatus: 406, Code: 2006}, endpoint: true},
		{err: cobo.APIError{HTTPStatus: 429, Code: 2010}, retry: true},
		{err: cobo.APIError{HTTPStatus: 502}, retry: true, endpoint: false},
	}
	for _, tc := range cases {
		require.Equal(t, tc.credential, tc.err.CredentialProblem(), "credential %+v", tc.err)
		require.Equal(t, tc.endpoint, tc.err.EndpointProblem(), "endpoint %+v", tc.err)
		require.Equal(t, tc.dup, tc.err.DuplicateRequest(), "duplicate %+v", tc.err)
		require.Equal(t, tc.retry, tc.err.Retryable(), "retryable %+v", tc.err)
	}
}

func TestClientConfigDefaultsAndValidate(t *testing.T) {
	t.Parallel()
	c := cobo.ClientConfig{}.WithDefaults()
	require.Equal(t, cobo.DevAPIURL, c.BaseURL)
	require.NotNil(t, c.HTTP)
	require.Equal(t, cobo.DefaultMaxAttempts, c.MaxAttempts)
	require.Equal(t, cobo.DefaultAttemptTimeout, c.AttemptTimeout)
	require.ErrorContains(t, c.Validate(), "Signer", "the provider's fields are checked, not only the embedded base's")

	signer, err := cobo.NewAPISigner(testSecret)
	require.NoError(t, err)
	_, err = cobo.NewClient(cobo.ClientConfig{Signer: signer, Config: httpretry.Config{MaxAttempts: -1}})
	require.ErrorContains(t, err, "cobo client config: MaxAttempts")
}
