// Package admin serves paystream's operator endpoints: health, readiness,
// metrics and order state. It is meant for a private listener, never the
// public webhook port.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/paystream/paystream/internal/domain"
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
	// on every request.
	Token string
	// Pprof serves the Go profiler under /debug/pprof/ for finding where
	// time goes under load. It exposes internals, so it is off by default
	// and, like everything here, behind Token when one is set.
	Pprof bool
}

// NewRouter returns the admin HTTP handler.
func NewRouter(cfg Config) http.Handler {
	r := mux.NewRouter()
	r.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}).Methods(http.MethodGet)
	r.HandleFunc("/readyz", func(w http.ResponseWriter, req *http.Request) {
		if cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
			defer cancel()
			if err := cfg.Ready(ctx); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}).Methods(http.MethodGet)
	if cfg.Gatherer != nil {
		r.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	}
	if cfg.Orders != nil {
		r.HandleFunc("/v1/orders/{order_id}", func(w http.ResponseWriter, req *http.Request) {
			id := mux.Vars(req)["order_id"]
			o, _, err := cfg.Orders.Get(req.Context(), id)
			switch {
			case errors.Is(err, domain.ErrNotFound):
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "order " + id + " not found"})
			case err != nil:
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			default:
				writeJSON(w, http.StatusOK, o.View())
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
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route " + req.URL.Path})
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": req.Method + " not allowed on " + req.URL.Path})
	})
	if cfg.Token == "" {
		return r
	}
	return requireToken(cfg.Token, r)
}

func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got := []byte(strings.TrimSpace(req.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="paystream-admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "admin requests need Authorization: Bearer <token>"})
			return
		}
		next.ServeHTTP(w, req)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
