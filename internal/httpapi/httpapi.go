// Package httpapi is what paystream's HTTP listeners share: the one
// mapping from errors to HTTP statuses and bodies, JSON answers, bearer
// tokens and the server limits every listener gets.
package httpapi

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// Errors of the HTTP edge, matched with errors.Is. Handlers wrap them with
// what was wrong; Status maps them.
var (
	// ErrMethodNotAllowed: the route does not take this method (405).
	ErrMethodNotAllowed = errors.New("method not allowed")
	// ErrTooLarge: the body is over the route's limit (413).
	ErrTooLarge = errors.New("body too large")
	// ErrUnauthorized: credentials or a signature are missing or wrong (401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnavailable: the work could not be done now; retry (503).
	ErrUnavailable = errors.New("unavailable")
	// ErrBusy: too many requests in flight; retry (503).
	ErrBusy = errors.New("too many requests in flight")
)

// Status maps err to its HTTP status. It is the one place where errors
// become statuses, for every route of every listener.
func Status(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrMethodNotAllowed):
		return http.StatusMethodNotAllowed
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrUnauthorized), errors.Is(err, cobo.ErrMissingSignature), errors.Is(err, cobo.ErrInvalidSignature):
		return http.StatusUnauthorized
	case errors.Is(err, cobo.ErrMalformedEvent), errors.Is(err, domain.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, domain.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrBusy):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// Body is the JSON of every error answer.
type Body struct {
	Error string `json:"error"`
}

// PublicMessage is what an answer says about err: what was wrong with the
// request for a 4xx; for a 5xx only what failed and to retry, since the
// cause is internal (it belongs in the log).
func PublicMessage(err error) string {
	switch code := Status(err); {
	case code < 500:
		return err.Error()
	case errors.Is(err, ErrBusy):
		return ErrBusy.Error() + "; retry later"
	case errors.Is(err, ErrUnavailable):
		// The first part of the chain names what was unavailable, e.g.
		// "event store unavailable"; what follows is the internal cause.
		public, _, _ := strings.Cut(err.Error(), ":")
		return public + "; retry later"
	}
	return "internal error; retry later"
}

// WriteError answers err with its status and a Body.
func WriteError(w http.ResponseWriter, err error) {
	code := Status(err)
	if code == http.StatusMethodNotAllowed && w.Header().Get("Allow") == "" {
		w.Header().Set("Allow", http.MethodGet)
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	WriteJSON(w, code, Body{Error: PublicMessage(err)})
}

// WriteJSON answers v as JSON with code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// RequireToken wraps next so that every request must carry
// "Authorization: Bearer <token>", except those open passes (probes).
func RequireToken(token string, open func(*http.Request) bool, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got := []byte(strings.TrimSpace(req.Header.Get("Authorization")))
		if (open == nil || !open(req)) && subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="paystream"`)
			WriteError(w, fmt.Errorf("%w: this listener needs Authorization: Bearer <token>", ErrUnauthorized))
			return
		}
		next.ServeHTTP(w, req)
	})
}

// Limits every paystream listener gets.
const (
	// MaxHeaderBytes bounds a request's headers (Go's default is 1 MiB).
	MaxHeaderBytes = 16 << 10
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout and IdleTimeout bound
	// a slow or idle client.
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// NewServer returns an http.Server for h with the limits above. Routes
// with tighter deadlines (the webhook's 2 s) enforce their own.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
	}
}

// IsLoopback reports whether addr (host:port) listens on loopback only. An
// empty host (":9091") listens on every interface and is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
