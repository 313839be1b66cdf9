package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/admin"
	"github.com/paystream/paystream/internal/domain"
)

type orders map[string]*domain.Order

func (o orders) Get(_ context.Context, id string) (*domain.Order, uint64, error) {
	if id == "broken" {
		return nil, 0, errors.New("nats: timeout reading KV_paystream_orders at 10.0.0.3")
	}
	if got, ok := o[id]; ok {
		return got, 1, nil
	}
	return nil, 0, fmt.Errorf("order %s: %w", id, domain.ErrNotFound)
}

func get(t *testing.T, h http.Handler, path, token string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), rec.Body.String())
	return rec.Code, out
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	odd := "a/b c?%é"
	h := admin.NewRouter(admin.Config{
		Orders:   orders{"O1": {OrderID: "O1", Status: domain.StatusCompleted}, odd: {OrderID: odd}},
		Gatherer: prometheus.NewRegistry(),
		Ready:    func(context.Context) error { return nil },
	})
	code, out := get(t, h, "/v1/orders/O1", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "Completed", out["status"])

	// Any order id can be read back, percent-encoded.
	code, out = get(t, h, "/v1/orders/"+url.PathEscape(odd), "")
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, odd, out["order_id"])

	code, out = get(t, h, "/v1/orders/nope", "")
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, `order "nope": not found`, out["error"])

	code, out = get(t, h, "/v1/orders/broken", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "order store unavailable; retry later", out["error"], "no internals")

	code, out = get(t, h, "/nothing", "")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, out["error"], "no route /nothing")

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/orders/O1", nil))
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
}

func TestTokenGuardsAllButProbes(t *testing.T) {
	t.Parallel()
	h := admin.NewRouter(admin.Config{
		Orders: orders{}, Gatherer: prometheus.NewRegistry(), Token: "s3cret",
		Ready: func(context.Context) error { return errors.New("event stream missing") },
	})
	code, _ := get(t, h, "/healthz", "")
	require.Equal(t, http.StatusOK, code, "probes need no token")
	code, out := get(t, h, "/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, code, "probes need no token")
	require.Equal(t, "event stream missing", out["error"])
	code, _ = get(t, h, "/v1/orders/O1", "")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = get(t, h, "/v1/orders/O1", "wrong")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = get(t, h, "/v1/orders/O1", "s3cret")
	require.Equal(t, http.StatusNotFound, code)
}
