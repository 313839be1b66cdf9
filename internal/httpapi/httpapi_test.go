package httpapi_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpapi"
)

func TestStatusAndPublicMessage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err    error
		code   int
		public string
	}{
		{nil, http.StatusOK, ""},
		{fmt.Errorf("%w: use POST", httpapi.ErrMethodNotAllowed), http.StatusMethodNotAllowed, "method not allowed: use POST"},
		{fmt.Errorf("%w: limit is 10 bytes", httpapi.ErrTooLarge), http.StatusRequestEntityTooLarge, "body too large: limit is 10 bytes"},
		{fmt.Errorf("%w: no key verifies it", cobo.ErrInvalidSignature), http.StatusUnauthorized, "invalid signature: no key verifies it"},
		{fmt.Errorf("%w: header absent", cobo.ErrMissingSignature), http.StatusUnauthorized, "missing signature: header absent"},
		{fmt.Errorf("stale: %w", httpapi.ErrUnauthorized), http.StatusUnauthorized, "stale: unauthorized"},
		{fmt.Errorf("%w: not JSON", cobo.ErrMalformedEvent), http.StatusBadRequest, "malformed event: not JSON"},
		{fmt.Errorf("%w: bad id", domain.ErrInvalid), http.StatusBadRequest, "invalid input: bad id"},
		{fmt.Errorf("order x: %w", domain.ErrNotFound), http.StatusNotFound, "order x: not found"},
		// 5xx: what failed and to retry; never the internal cause.
		{fmt.Errorf("%w: publish event e1: nats: no response from stream", fmt.Errorf("event store %w", httpapi.ErrUnavailable)), http.StatusServiceUnavailable, "event store unavailable; retry later"},
		{fmt.Errorf("%w: 256 in flight", httpapi.ErrBusy), http.StatusServiceUnavailable, "too many requests in flight; retry later"},
		{errors.New("nats: connection closed at 10.0.0.3"), http.StatusInternalServerError, "internal error; retry later"},
	}
	for _, c := range cases {
		require.Equal(t, c.code, httpapi.Status(c.err), "%v", c.err)
		if c.err != nil {
			require.Equal(t, c.public, httpapi.PublicMessage(c.err), "%v", c.err)
		}
	}
}

func TestWriteErrorAndTokens(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	httpapi.WriteError(rec, fmt.Errorf("%w: x", httpapi.ErrBusy))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	require.JSONEq(t, `{"error":"too many requests in flight; retry later"}`, rec.Body.String())

	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	h := httpapi.RequireToken("s3cret", func(r *http.Request) bool { return r.URL.Path == "/healthz" }, ok)
	for _, c := range []struct {
		path, auth string
		code       int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "Bearer wrong", http.StatusUnauthorized},
		{"/metrics", "Bearer s3cret", http.StatusNoContent},
		{"/healthz", "", http.StatusNoContent},
	} {
		req := httptest.NewRequest(http.MethodGet, c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, c.code, rec.Code, "%s %q", c.path, c.auth)
	}
}

func TestIsLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:9091": true, "[::1]:4222": true, "localhost:8081": true,
		":9091": false, "0.0.0.0:9091": false, "10.0.0.3:9091": false, "nonsense": false,
	} {
		require.Equal(t, want, httpapi.IsLoopback(addr), addr)
	}
}
