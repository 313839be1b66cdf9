// Package bitgo allocates funds to a BitGo Go Network (Off-Exchange
// Settlement) partner connection: POST
// /api/network/v1/enterprises/{eid}/clients/connections/{cid}/allocations,
// with the payload signed by the Go Account's user key as a Bitcoin Signed
// Message, as BitGoJS does.
//
// Allocation is split in two so that it is exactly-once across crashes:
// Prepare builds and signs a Request (with a fresh nonce), the caller
// persists it durably, and Send sends exactly those bytes. BitGo
// deduplicates on clientExternalId, and documents re-sending the identical
// request as the way to retry; but it also documents the nonce as unique
// per request and the signature as usable once, so a replay may be
// refused. After an unclear outcome the caller therefore looks the
// allocation up (Find) and, when BitGo does not have it, Prepares a fresh
// request under the same clientExternalId.
package bitgo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/httpretry"
)

// Base URLs of BitGo's API. Network API paths hang directly off them.
const (
	TestBaseURL = "https://app.bitgo-test.com"
	ProdBaseURL = "https://app.bitgo.com"
)

// Defaults for Config: httpretry's, but for the timeout.
const (
	DefaultMaxAttempts = httpretry.DefaultMaxAttempts
	DefaultBackoffBase = httpretry.DefaultBackoffBase
	DefaultBackoffMax  = httpretry.DefaultBackoffMax
	// DefaultHTTPTimeout bounds one exchange: the timeout of the client
	// used when Config.HTTP is nil, and the default AttemptTimeout.
	DefaultHTTPTimeout = 30 * time.Second
)

// Allocation statuses. Cleared is terminal success, released terminal
// failure, reserved pending (poll Get).
const (
	StatusCleared  = "cleared"
	StatusReleased = "released"
	StatusReserved = "reserved"
)

// maxResponse bounds a response body read into memory.
const maxResponse = 1 << 20

// maxField bounds connectionId, clientExternalId and notes; BitGo does not
// document limits.
const maxField = 1024

// ErrReleased means BitGo released the allocation: a terminal failure such
// as insufficient balance, an inactive connection or a partner rejection.
// Re-sending cannot change it; a new attempt needs a new clientExternalId.
// Test with errors.Is; errors.As with *ReleasedError gives the allocation.
var ErrReleased = errors.New("bitgo allocation released")

// ReleasedError is the error for a released allocation. It wraps
// ErrReleased.
type ReleasedError struct {
	// Allocation is the released allocation BitGo returned; its ID may be
	// empty if BitGo sent none.
	Allocation Allocation
	// Reason is BitGo's reason, or its error message when there is none.
	Reason string
}

// Error implements error.
func (e *ReleasedError) Error() string {
	return fmt.Sprintf("%v: allocation %q: %s", ErrReleased, e.Allocation.ID, e.Reason)
}

// Unwrap returns ErrReleased.
func (e *ReleasedError) Unwrap() error { return ErrReleased }

// APIError is an HTTP error answer from BitGo, with its {"error"} message
// (or the start of the body when there is none).
type APIError struct {
	HTTPStatus int
	Message    string
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("bitgo api: http %d: %s", e.HTTPStatus, e.Message)
}

// Retryable reports whether the same request may succeed later: 5xx
// (including 500 with a reserved, retriable allocation) and 429. Other 4xx
// are configuration, authorization or signing problems.
func (e *APIError) Retryable() bool {
	return e.HTTPStatus >= 500 || e.HTTPStatus == http.StatusTooManyRequests
}

// ReplayError is Send's error when BitGo refused, with an answer that is
// not worth retrying, a resend of the identical body within one Send: an
// earlier try's outcome was unclear (no answer, 5xx, 429, or reserved and
// retriable), so BitGo may have seen the body, nonce included, before it
// answered this one. The refusal may then be of the replayed nonce or
// clientExternalId, not of the allocation, and does not show that BitGo
// has no allocation. Err is that answer's error (an *APIError, a
// *ReleasedError or another), reachable with errors.As.
type ReplayError struct {
	// Tries is how many times the body was sent in that Send.
	Tries int
	Err   error
}

// Error implements error.
func (e *ReplayError) Error() string {
	return fmt.Sprintf("answer to try %d of the identical body, after tries BitGo may have seen: %v", e.Tries, e.Err)
}

// Unwrap returns the answer's error.
func (e *ReplayError) Unwrap() error { return e.Err }

// Amount is an amount in base units: Quantity is an integer string.
type Amount struct {
	Currency string `json:"currency"`
	Quantity string `json:"quantity"`
}

// Allocation is BitGo's allocation object, as returned by the allocate,
// get and list routes. Reason is set when not cleared. Retriable is true
// only for a reserved allocation that must be re-sent. Times are ISO-8601.
type Allocation struct {
	ID               string `json:"id"`
	ConnectionID     string `json:"connectionId"`
	ClientExternalID string `json:"clientExternalId"`
	Status           string `json:"status"`
	Reason           string `json:"reason,omitempty"`
	Notes            string `json:"notes,omitempty"`
	Amount           Amount `json:"amount"`
	Retriable        bool   `json:"retriable"`
	CreatedAt        string `json:"createdAt,omitempty"`
	UpdatedAt        string `json:"updatedAt,omitempty"`
}

// Config configures a Client. BaseURL, EnterpriseID, AccessToken,
// SigningKey and Currencies are required. The embedded httpretry.Config is
// the base every provider client shares: HTTP (when nil, a client with
// DefaultHTTPTimeout), MaxAttempts, BackoffBase, BackoffMax and
// AttemptTimeout (DefaultHTTPTimeout), the Default constants when zero.
type Config struct {
	httpretry.Config
	// BaseURL is TestBaseURL, ProdBaseURL or a simulator, without a path.
	BaseURL string
	// EnterpriseID is the BitGo enterprise that owns the connections.
	EnterpriseID string
	// AccessToken is a token with settlement_network_read/write scopes,
	// sent as "Authorization: Bearer <token>".
	AccessToken string
	// SigningKey is the Go Account user key that signs payloads (see
	// ParseSigningKey).
	SigningKey *secp256k1.PrivateKey
	// Currencies maps Cobo token ids to BitGo currencies. New copies it.
	Currencies map[string]Currency
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.Config = c.Config.WithDefaults(httpretry.Config{
		HTTP:           &http.Client{Timeout: DefaultHTTPTimeout},
		AttemptTimeout: DefaultHTTPTimeout,
	})
	return c
}

// Validate reports the first invalid field by name, the embedded
// httpretry.Config's included. The message never contains the token or
// key.
func (c Config) Validate() error {
	u, err := url.Parse(c.BaseURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("BaseURL must be an http(s) URL, got %q", c.BaseURL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Errorf("BaseURL must have no query, fragment or credentials, got %q", u.Redacted())
	case strings.TrimSpace(c.EnterpriseID) == "":
		return errors.New("EnterpriseID is required")
	case strings.ContainsAny(c.EnterpriseID, "/?# \t"):
		return fmt.Errorf("EnterpriseID %q is not a path segment", c.EnterpriseID)
	case strings.TrimSpace(c.AccessToken) == "":
		return errors.New("AccessToken is required")
	case strings.ContainsAny(c.AccessToken, " \t\r\n"):
		// Do not echo the token: it is a credential.
		return errors.New("AccessToken contains blanks or line breaks")
	case c.SigningKey == nil:
		return errors.New("SigningKey is required")
	case len(c.Currencies) == 0:
		return errors.New("Currencies must map at least one token id")
	}
	if err := c.Config.Validate(); err != nil {
		return err
	}
	for token, cur := range c.Currencies {
		if token == "" {
			return errors.New("Currencies has an empty token id")
		}
		if err := cur.validate(); err != nil {
			return fmt.Errorf("Currencies[%s]: %w", token, err)
		}
	}
	return nil
}

// Client prepares and sends BitGo partner-connection allocations. It is
// safe for concurrent use.
type Client struct {
	cfg  Config
	base string
	// nonce makes a Prepare nonce; tests fix it.
	nonce func() (string, error)
}

// New returns a Client for cfg with defaults applied. An invalid config is
// an error naming the field; it never contains the token or key.
func New(cfg Config) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bitgo client config: %w", err)
	}
	cur := make(map[string]Currency, len(cfg.Currencies))
	for k, v := range cfg.Currencies {
		cur[k] = v
	}
	cfg.Currencies = cur
	return &Client{
		cfg:   cfg,
		base:  strings.TrimRight(cfg.BaseURL, "/"),
		nonce: randomNonce,
	}, nil
}

// Request is a fully prepared allocation request. The caller persists it
// durably BEFORE the first Send and may resend exactly it (same bytes),
// also after a restart. Once its outcome is unclear, BitGo may refuse
// those bytes for their spent nonce: the caller then looks the allocation
// up with Find before preparing, and persisting, a fresh request with the
// same clientExternalId (a new nonce and signature). Body is the JSON POST
// body.
type Request struct {
	ConnectionID     string          `json:"connection_id"`
	ClientExternalID string          `json:"client_external_id"`
	Body             json.RawMessage `json:"body"`
}

// bodyFields are the fields of a Request's body that say what it
// allocates, and its nonce.
type bodyFields struct {
	Amount           Amount  `json:"amount"`
	ClientExternalID string  `json:"clientExternalId"`
	Nonce            string  `json:"nonce"`
	Notes            *string `json:"notes"`
}

func (r Request) fields() (bodyFields, error) {
	var f bodyFields
	if err := json.Unmarshal(r.Body, &f); err != nil {
		return f, fmt.Errorf("decode request body of %s: %w", r.ClientExternalID, err)
	}
	return f, nil
}

// Nonce returns the nonce in r's body ("" when the body has none). A nonce
// identifies one signed request; it is not a secret.
func (r Request) Nonce() string {
	f, _ := r.fields()
	return f.Nonce
}

// SameAllocation reports whether r and o ask for the same allocation: the
// same connection, clientExternalId, amount and notes, whatever their
// nonces and signatures. A fresh request for a clientExternalId must be
// the same allocation as the first, or BitGo holds two different
// allocations under one idempotency key.
func (r Request) SameAllocation(o Request) bool {
	a, errA := r.fields()
	b, errB := o.fields()
	if errA != nil || errB != nil || a.Nonce == "" || b.Nonce == "" {
		return false
	}
	notesEqual := (a.Notes == nil) == (b.Notes == nil) && (a.Notes == nil || *a.Notes == *b.Notes)
	return r.ConnectionID == o.ConnectionID && r.ClientExternalID == o.ClientExternalID &&
		a.ClientExternalID == r.ClientExternalID && b.ClientExternalID == o.ClientExternalID &&
		a.Amount == b.Amount && notesEqual
}

// allocationPayload is the signed payload, with fields in BitGoJS order
// (prepareAllocation: connectionId, amount, notes, clientExternalId, nonce).
type allocationPayload struct {
	ConnectionID     string `json:"connectionId"`
	Amount           Amount `json:"amount"`
	Notes            string `json:"notes,omitempty"`
	ClientExternalID string `json:"clientExternalId"`
	Nonce            string `json:"nonce"`
}

// allocationBody is the POST body.
type allocationBody struct {
	Amount           Amount `json:"amount"`
	ClientExternalID string `json:"clientExternalId"`
	Nonce            string `json:"nonce"`
	Notes            string `json:"notes,omitempty"`
	Payload          string `json:"payload"`
	Signature        string `json:"signature"`
}

// Prepare builds and signs the request allocating amount of tokenID (a
// Cobo token id mapped by Config.Currencies) to connectionID. The body is
// {amount:{currency,quantity}, clientExternalId, nonce, notes?, payload,
// signature}, where quantity is amount*10^decimals as an integer string,
// nonce 32 random bytes in hex, payload the compact JSON of
// {connectionId, amount, notes (omitted when empty), clientExternalId,
// nonce} in that order without HTML escaping, and signature
// SignMessage(payload). clientExternalId is BitGo's idempotency key:
// derive it deterministically from what is being paid.
//
// It fails when the token is unknown; when amount is not positive or has
// more significant decimals than the currency; when connectionID or
// clientExternalID is empty; or when an id or the notes are longer than
// 1024 bytes or not printable ASCII (which keeps the signed bytes
// identical to what BitGoJS would sign). Prepare does no I/O.
func (c *Client) Prepare(connectionID, clientExternalID, tokenID string, amount decimal.Decimal, notes string) (Request, error) {
	r, err := c.prepare(connectionID, clientExternalID, tokenID, amount, notes)
	if err != nil {
		return Request{}, fmt.Errorf("bitgo prepare %s: %w", clientExternalID, err)
	}
	return r, nil
}

func (c *Client) prepare(connectionID, clientExternalID, tokenID string, amount decimal.Decimal, notes string) (Request, error) {
	if err := checkText("connectionId", connectionID, true); err != nil {
		return Request{}, err
	}
	if err := checkText("clientExternalId", clientExternalID, true); err != nil {
		return Request{}, err
	}
	if err := checkText("notes", notes, false); err != nil {
		return Request{}, err
	}
	cur, ok := c.cfg.Currencies[tokenID]
	if !ok {
		return Request{}, fmt.Errorf("token %q has no BitGo currency configured", tokenID)
	}
	qty, err := cur.quantity(amount)
	if err != nil {
		return Request{}, err
	}
	nonce, err := c.nonce()
	if err != nil {
		return Request{}, fmt.Errorf("nonce: %w", err)
	}
	amt := Amount{Currency: cur.Name, Quantity: qty}
	payload, err := marshalCompact(allocationPayload{
		ConnectionID:     connectionID,
		Amount:           amt,
		Notes:            notes,
		ClientExternalID: clientExternalID,
		Nonce:            nonce,
	})
	if err != nil {
		return Request{}, fmt.Errorf("encode payload: %w", err)
	}
	body, err := marshalCompact(allocationBody{
		Amount:           amt,
		ClientExternalID: clientExternalID,
		Nonce:            nonce,
		Notes:            notes,
		Payload:          string(payload),
		Signature:        SignMessage(c.cfg.SigningKey, payload),
	})
	if err != nil {
		return Request{}, fmt.Errorf("encode body: %w", err)
	}
	return Request{ConnectionID: connectionID, ClientExternalID: clientExternalID, Body: body}, nil
}

// marshalCompact is json.Marshal without HTML escaping, so that '<', '>'
// and '&' appear as JSON.stringify writes them.
func marshalCompact(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// checkText keeps signed strings to printable ASCII: for other text Go's
// encoder and JSON.stringify differ (U+2028), and BitGo's message signing
// may count UTF-16 units instead of bytes.
func checkText(field, s string, required bool) error {
	if s == "" {
		if required {
			return fmt.Errorf("%s is empty", field)
		}
		return nil
	}
	if len(s) > maxField {
		return fmt.Errorf("%s has %d bytes, at most %d allowed", field, len(s), maxField)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Errorf("%s has a byte that is not printable ASCII at offset %d", field, i)
		}
	}
	return nil
}

func randomNonce() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// allocationEnvelope is the body of allocation answers, success or error.
type allocationEnvelope struct {
	Allocation *Allocation `json:"allocation"`
	Error      string      `json:"error"`
}

// outcome is the result of one exchange.
type outcome struct {
	alloc Allocation
	err   error
	retry bool
}

// Send POSTs r.Body, byte for byte, to r.ConnectionID's allocations route
// and interprets BitGo's answer:
//   - 200 cleared: the Allocation, nil.
//   - 200 reserved (retriable=false): the Allocation with Status reserved,
//     nil; BitGo finishes it asynchronously, so poll Get.
//   - 422, or 200 with a released allocation: the released Allocation
//     and a *ReleasedError wrapping ErrReleased. Terminal.
//   - 200 without a usable allocation (no body, unknown status, another
//     clientExternalId): an error, not retried.
//   - network errors, timeouts, 429, 5xx, and 500 with a reserved
//     retriable allocation: the identical body is sent again after a
//     jittered backoff, up to Config.MaxAttempts tries in all. If they all
//     fail, the error is the last one (an *APIError with Retryable true,
//     or a transport error), and the allocation's fate is unknown: the
//     caller must Send the same Request again later.
//   - other 4xx: an *APIError, not retried.
//
// If ctx ends first, the error wraps both ctx.Err() and the last failure;
// the allocation's fate is then unknown too. An answer that ends Send
// after the body was sent more than once (any error but a retryable one)
// is wrapped in a *ReplayError: it answers a replay.
//
// Errors are wrapped as "bitgo allocate <clientExternalId>: ...". Send is
// safe to call concurrently, also with the same Request. BitGo documents
// clientExternalId as its idempotency key and replaying the identical
// request as the way to retry; that a replay of an already recorded
// allocation answers 200 with that allocation (as bitgosim does) is not
// confirmed by BitGo's documentation, so an unexpected 4xx on a replay
// should be reconciled with the list endpoint, not treated as a failure.
func (c *Client) Send(ctx context.Context, r Request) (Allocation, error) {
	a, err := c.send(ctx, r)
	if err != nil {
		return a, fmt.Errorf("bitgo allocate %s: %w", r.ClientExternalID, err)
	}
	return a, nil
}

func (c *Client) send(ctx context.Context, r Request) (Allocation, error) {
	if r.ConnectionID == "" || r.ClientExternalID == "" || len(r.Body) == 0 {
		return Allocation{}, errors.New("request is incomplete: connection id, client external id and body are required")
	}
	u := c.enterpriseURL() + "/clients/connections/" + url.PathEscape(r.ConnectionID) + "/allocations"
	// op runs sequentially, so tries and last need no lock.
	var tries int
	var last outcome
	a, err := c.retry(ctx, func(ctx context.Context) outcome {
		tries++
		status, data, err := c.exchange(ctx, http.MethodPost, u, r.Body)
		if err != nil {
			// The server may have acted; the identical body is safe to
			// replay because BitGo deduplicates on clientExternalId.
			last = outcome{err: err, retry: true}
		} else {
			last = c.postOutcome(status, data, r.ClientExternalID)
		}
		return last
	})
	if err != nil && tries > 1 && !last.retry {
		// A refusal of a replay says nothing certain about the
		// allocation: the caller must tell it from a refusal of the
		// request itself.
		err = &ReplayError{Tries: tries, Err: err}
	}
	return a, err
}

func (c *Client) postOutcome(status int, data []byte, clientExternalID string) outcome {
	var env allocationEnvelope
	decodeErr := json.Unmarshal(data, &env)
	var a Allocation
	if env.Allocation != nil {
		a = *env.Allocation
	}
	switch {
	case status >= 200 && status < 300:
		if decodeErr != nil || env.Allocation == nil {
			return outcome{err: fmt.Errorf("http %d without an allocation in the body", status)}
		}
		if a.ClientExternalID != "" && a.ClientExternalID != clientExternalID {
			return outcome{alloc: a, err: fmt.Errorf("answer is for clientExternalId %q", a.ClientExternalID)}
		}
		switch a.Status {
		case StatusCleared:
			return outcome{alloc: a}
		case StatusReserved:
			if a.Retriable {
				return outcome{alloc: a, retry: true, err: &APIError{HTTPStatus: status, Message: "allocation reserved, retriable: " + a.Reason}}
			}
			return outcome{alloc: a}
		case StatusReleased:
			return outcome{alloc: a, err: &ReleasedError{Allocation: a, Reason: firstNonEmpty(a.Reason, env.Error, "no reason given")}}
		default:
			return outcome{alloc: a, err: fmt.Errorf("allocation %s has unknown status %q", a.ID, a.Status)}
		}
	case status == http.StatusUnprocessableEntity:
		// 422 is BitGo's terminal business failure; the body normally
		// carries the released allocation.
		return outcome{alloc: a, err: &ReleasedError{Allocation: a, Reason: firstNonEmpty(a.Reason, env.Error, "http 422")}}
	}
	apiErr := newAPIError(status, data, env.Error)
	if env.Allocation != nil && a.Status == StatusReserved && a.Retriable {
		apiErr.Message = "allocation reserved, retriable: " + firstNonEmpty(a.Reason, apiErr.Message)
	}
	return outcome{alloc: a, err: apiErr, retry: apiErr.Retryable()}
}

// Get returns the allocation with id allocationID (GET
// .../clients/allocations/{id}). Transient failures are retried like
// Send's; other answers are an *APIError (404 when unknown).
func (c *Client) Get(ctx context.Context, allocationID string) (Allocation, error) {
	if allocationID == "" {
		return Allocation{}, errors.New("bitgo get allocation: empty allocation id")
	}
	u := c.enterpriseURL() + "/clients/allocations/" + url.PathEscape(allocationID)
	a, err := c.retry(ctx, func(ctx context.Context) outcome {
		status, data, err := c.exchange(ctx, http.MethodGet, u, nil)
		if err != nil {
			return outcome{err: err, retry: true}
		}
		if status < 200 || status >= 300 {
			var env allocationEnvelope
			_ = json.Unmarshal(data, &env)
			apiErr := newAPIError(status, data, env.Error)
			return outcome{err: apiErr, retry: apiErr.Retryable()}
		}
		var env allocationEnvelope
		if err := json.Unmarshal(data, &env); err != nil || env.Allocation == nil {
			return outcome{err: fmt.Errorf("http %d without an allocation in the body", status)}
		}
		return outcome{alloc: *env.Allocation}
	})
	if err != nil {
		return a, fmt.Errorf("bitgo get allocation %s: %w", allocationID, err)
	}
	return a, nil
}

func (c *Client) enterpriseURL() string {
	return c.base + "/api/network/v1/enterprises/" + url.PathEscape(c.cfg.EnterpriseID)
}

// retry runs op until it succeeds, fails for good, the context ends or
// MaxAttempts tries are used. An ended context is reported together with
// the last failure, both wrapped.
func (c *Client) retry(ctx context.Context, op func(context.Context) outcome) (Allocation, error) {
	var last outcome
	for attempt := 1; attempt <= c.cfg.MaxAttempts; attempt++ {
		if attempt > 1 {
			if err := backoff.Wait(ctx, c.cfg.Backoff(attempt-1)); err != nil {
				return last.alloc, fmt.Errorf("%w (last error: %w)", err, last.err)
			}
		}
		last = op(ctx)
		if !last.retry || last.err == nil {
			return last.alloc, last.err
		}
		if err := ctx.Err(); err != nil {
			if errors.Is(last.err, err) {
				return last.alloc, last.err
			}
			return last.alloc, fmt.Errorf("%w (last error: %w)", err, last.err)
		}
	}
	return last.alloc, fmt.Errorf("gave up after %d attempts: %w", c.cfg.MaxAttempts, last.err)
}

// exchange performs one HTTP exchange and reads the answer. Errors name
// the method and path only: the URL has no secrets, but headers do.
func (c *Client) exchange(ctx context.Context, method, u string, body []byte) (int, []byte, error) {
	ctx, cancel := c.cfg.Attempt(ctx)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", method, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.AccessToken)
	req.Header.Set("enterprise-id", c.cfg.EnterpriseID)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.cfg.HTTP.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, req.URL.Path, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: read http %d answer: %w", method, req.URL.Path, resp.StatusCode, err)
	}
	return resp.StatusCode, data, nil
}

// unwrapURLError drops *url.Error's repetition of method and URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func newAPIError(status int, data []byte, msg string) *APIError {
	if msg == "" {
		msg = strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	if msg == "" || msg == "{}" {
		msg = http.StatusText(status)
	}
	return &APIError{HTTPStatus: status, Message: msg}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// Bounds of Find's scan of the list endpoint.
const (
	findPageSize = 500
	findMaxPages = 200
)

// Find looks for the allocation recorded under clientExternalID on
// connectionID, created on or after since (zero: any time), through GET
// .../clients/allocations. BitGo's list has no clientExternalId filter, so
// it filters by connection and date and matches on the client side. It
// reports false only after reading the list to its end: pages are sorted
// by id, so allocations created meanwhile can repeat an entry at a page
// boundary but never hide one, and a page shorter than asked for does not
// end the scan (BitGo's largest page size is not documented), only an
// empty one does. A list longer than 200 pages, or one that answers every
// page alike, is an error, never a "not found". Use it to reconcile after
// any unclear outcome: whether BitGo answers a replay of a recorded
// clientExternalId with the allocation or with an error is unconfirmed.
// ctx bounds the whole scan; each page is retried like Get.
func (c *Client) Find(ctx context.Context, connectionID, clientExternalID string, since time.Time) (Allocation, bool, error) {
	var prevFirst string
	for page := 0; page < findMaxPages; page++ {
		q := url.Values{}
		q.Set("connectionIds[]", connectionID)
		q.Set("types[]", "allocation")
		q.Set("sortField", "id")
		q.Set("sortDirection", "ASC")
		q.Set("pageNumber", fmt.Sprint(page))
		q.Set("pageSize", fmt.Sprint(findPageSize))
		if !since.IsZero() {
			q.Set("createdOnOrAfter", since.UTC().Format(time.RFC3339))
		}
		u := c.enterpriseURL() + "/clients/allocations?" + q.Encode()
		var list struct {
			Allocations []Allocation `json:"allocations"`
		}
		_, err := c.retry(ctx, func(ctx context.Context) outcome {
			status, data, err := c.exchange(ctx, http.MethodGet, u, nil)
			if err != nil {
				return outcome{err: err, retry: true}
			}
			if status < 200 || status >= 300 {
				var env allocationEnvelope
				_ = json.Unmarshal(data, &env)
				apiErr := newAPIError(status, data, env.Error)
				return outcome{err: apiErr, retry: apiErr.Retryable()}
			}
			if err := json.Unmarshal(data, &list); err != nil {
				return outcome{err: fmt.Errorf("http %d: decode allocation list: %w", status, err)}
			}
			return outcome{}
		})
		if err != nil {
			return Allocation{}, false, fmt.Errorf("bitgo find allocation %s: %w", clientExternalID, err)
		}
		for _, a := range list.Allocations {
			if a.ClientExternalID == clientExternalID {
				return a, true, nil
			}
		}
		if len(list.Allocations) == 0 {
			return Allocation{}, false, nil
		}
		if page > 0 && list.Allocations[0].ID == prevFirst {
			// A server ignoring pageNumber would answer the first page for
			// ever; saying "not found" then could fail an item BitGo made.
			return Allocation{}, false, fmt.Errorf("bitgo find allocation %s: page %d repeats page %d; the list does not page", clientExternalID, page, page-1)
		}
		prevFirst = list.Allocations[0].ID
	}
	return Allocation{}, false, fmt.Errorf("bitgo find allocation %s: more than %d allocations on connection %s since %s; narrow the window", clientExternalID, findPageSize*findMaxPages, connectionID, since.Format(time.RFC3339))
}
