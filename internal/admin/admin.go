// Package admin serves paystream's operator endpoints: health, readiness,
// metrics and order state. It is meant for a private listener, never the
// public webhook port.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/url"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpapi"
)

// OrderReader reads an order's current state.
type OrderReader interface {
	// Get returns the order, or an error wrapping domain.ErrNotFound.
	Get(ctx context.Context, orderID string) (*domain.Order, uint64, error)
}

// Config configures the admin router.
type Config struct {
	// Orders, when set, serves GET /v1/orders/{order_id}.
	Orders OrderReader
	// Ready reports whether the process can do its work; nil means ready.
	Ready func(ctx context.Context) error
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Token, when non-empty, is required as "Authorization: Bearer <token>"
	// on every request but the probes /healthz and /readyz, which
	// orchestrators call without one.
	Token string
	// Pprof serves the Go profiler under /debug/pprof/ for finding where
	// time goes under load. It exposes internals, so it is off by default
	// and, like everything here, behind Token when one is set.
	Pprof bool
}

// NewRouter returns the admin HTTP handler.
func NewRouter(cfg Config) http.Handler {
	// Encoded paths, so that an order id holding "/" or any other byte
	// reaches the route whole when the client percent-encodes it.
	r := mux.NewRouter().UseEncodedPath()
	r.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}).Methods(http.MethodGet)
	r.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		if cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
			defer cancel()
			if err := cfg.Ready(ctx); err != nil {
				// Not ready is the answer, not a failure of the route: it
				// says what is missing, for the operator at the probe.
				httpapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
				return
			}
		}
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}).Methods(http.MethodGet)
	if cfg.Gatherer != nil {
		r.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	}
	if cfg.Orders != nil {
		r.HandleFunc("/v1/orders/{order_id}", func(w http.ResponseWriter, req *http.Request) {
			id, err := url.PathUnescape(mux.Vars(req)["order_id"])
			if err != nil {
				httpapi.WriteError(w, fmt.Errorf("%w: order id: %v", domain.ErrInvalid, err))
				return
			}
			o, _, err := cfg.Orders.Get(req.Context(), id)
			switch {
			case errors.Is(err, domain.ErrNotFound):
				httpapi.WriteError(w, fmt.Errorf("order %q: %w", id, domain.ErrNotFound))
			case err != nil:
				httpapi.WriteError(w, fmt.Errorf("order store %w: %v", httpapi.ErrUnavailable, err))
			default:
				httpapi.WriteJSON(w, http.StatusOK, o.View())
			}
		}).Methods(http.MethodGet)
	}
	if cfg.Pprof {
		r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		r.HandleFunc("/debug/pprof/profile", pprof.Profile)
		r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		r.HandleFunc("/debug/pprof/trace", pprof.Trace)
		r.PathPrefix("/debug/pprof/").HandlerFunc(pprof.Index)
	}
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		httpapi.WriteError(w, fmt.Errorf("no route %s: %w", req.URL.Path, domain.ErrNotFound))
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		httpapi.WriteError(w, fmt.Errorf("%w: %s on %s", httpapi.ErrMethodNotAllowed, req.Method, req.URL.Path))
	})
	if cfg.Token == "" {
		return r
	}
	return httpapi.RequireToken(cfg.Token, isProbe, r)
}

// isProbe reports a health or readiness probe, which needs no token.
func isProbe(req *http.Request) bool {
	return req.Method == http.MethodGet && (req.URL.Path == "/healthz" || req.URL.Path == "/readyz")
}
