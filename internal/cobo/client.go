package cobo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/httpretry"
)

// ErrBatchNotFound means no batch allocation has the requested id or
// request_id.
var ErrBatchNotFound = errors.New("batch allocation not found")

// Defaults for ClientConfig: httpretry's.
const (
	DefaultMaxAttempts    = httpretry.DefaultMaxAttempts
	DefaultBackoffBase    = httpretry.DefaultBackoffBase
	DefaultBackoffMax     = httpretry.DefaultBackoffMax
	DefaultAttemptTimeout = httpretry.DefaultAttemptTimeout
)

// ClientConfig configures a Client. The embedded httpretry.Config is the
// base every provider client shares: HTTP (a default client when nil),
// MaxAttempts (tries of one call on 5xx, 429 and timeouts), BackoffBase,
// BackoffMax and AttemptTimeout, the Default constants when zero.
type ClientConfig struct {
	httpretry.Config
	// BaseURL includes the /v2 prefix, e.g. https://api.dev.cobo.com/v2.
	BaseURL string
	// Signer signs every request. Required.
	Signer *APISigner
	// Observe, when set, sees every exchange: the endpoint name, the HTTP
	// status (0 for a transport error), Cobo's error_code (0 if none) and
	// the duration. Metrics hang off it.
	Observe func(endpoint string, status, errorCode int, d time.Duration)
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c ClientConfig) WithDefaults() ClientConfig {
	if c.BaseURL == "" {
		c.BaseURL = DevAPIURL
	}
	c.Config = c.Config.WithDefaults(httpretry.Config{})
	return c
}

// Validate reports the first invalid field by name, the embedded
// httpretry.Config's included.
func (c ClientConfig) Validate() error {
	u, err := url.Parse(c.BaseURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("BaseURL must be an http(s) URL, got %q", c.BaseURL)
	case c.Signer == nil:
		return errors.New("Signer is required")
	}
	return c.Config.Validate()
}

// Client calls Cobo's payments API with signed requests. It is safe for
// concurrent use.
type Client struct {
	cfg  ClientConfig
	base *url.URL
}

// NewClient returns a Client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cobo client config: %w", err)
	}
	base, _ := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	return &Client{cfg: cfg, base: base}, nil
}

// CreateBatchAllocation creates a batch, idempotently on req.RequestID.
// Transient failures (5xx, 429, timeouts) are retried with the same body;
// an error returned after them leaves the batch's fate unknown, and the
// caller must send the same request again later or look it up.
//
// When Cobo answers with a code that may mean "request_id already used"
// (APIError.DuplicateRequest), the batch is looked up by request_id and
// returned if it exists. Otherwise the error wraps both Cobo's answer (an
// *APIError, found first by errors.As) and the lookup's outcome: it wraps
// ErrBatchNotFound only when Cobo said no batch has the request_id, and
// the lookup's own error when it failed.
//
// Any other *APIError is returned as Cobo's answer, with Retried set when
// an earlier try of this call may have created the batch; the caller
// decides whether to look it up (FindBatchAllocation).
func (c *Client) CreateBatchAllocation(ctx context.Context, req CreateBatchAllocationRequest) (BatchAllocation, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return BatchAllocation{}, fmt.Errorf("encode batch %s: %w", req.RequestID, err)
	}
	var out BatchAllocation
	err = c.do(ctx, "create_batch_allocation", http.MethodPost, "/payments/batch_allocations", nil, body, &out)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.DuplicateRequest() {
		existing, findErr := c.FindBatchAllocation(ctx, req.RequestID)
		if findErr != nil {
			return BatchAllocation{}, fmt.Errorf("create batch %s: %w; looking it up by request_id: %w", req.RequestID, err, findErr)
		}
		return existing, nil
	}
	if err != nil {
		return BatchAllocation{}, fmt.Errorf("create batch %s: %w", req.RequestID, err)
	}
	return out, nil
}

// FindBatchAllocation returns the batch created with requestID. The error
// wraps ErrBatchNotFound only when Cobo's answer is certain: an empty list
// for the request_id filter. A list holding only other request_ids (the
// filter ignored or matching loosely) proves nothing and is an error
// without ErrBatchNotFound, as is any failed call.
func (c *Client) FindBatchAllocation(ctx context.Context, requestID string) (BatchAllocation, error) {
	var out BatchAllocationList
	q := url.Values{"request_id": {requestID}, "limit": {"50"}}
	if err := c.do(ctx, "list_batch_allocations", http.MethodGet, "/payments/batch_allocations", q, nil, &out); err != nil {
		return BatchAllocation{}, fmt.Errorf("find batch %s: %w", requestID, err)
	}
	for _, b := range out.Data {
		if b.RequestID == requestID {
			return b, nil
		}
	}
	if len(out.Data) > 0 {
		return BatchAllocation{}, fmt.Errorf("find batch %s: cobo listed %d batches of other request_ids for the request_id filter; whether it exists is unknown", requestID, len(out.Data))
	}
	return BatchAllocation{}, fmt.Errorf("find batch %s: %w", requestID, ErrBatchNotFound)
}

// GetBatchAllocation returns a batch with its allocation items.
func (c *Client) GetBatchAllocation(ctx context.Context, batchAllocationID string) (BatchAllocation, error) {
	var out BatchAllocation
	err := c.do(ctx, "get_batch_allocation", http.MethodGet, "/payments/batch_allocations/"+batchAllocationID, nil, nil, &out)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.HTTPStatus == http.StatusNotFound {
		return BatchAllocation{}, fmt.Errorf("get batch %s: %w: %w", batchAllocationID, ErrBatchNotFound, err)
	}
	if err != nil {
		return BatchAllocation{}, fmt.Errorf("get batch %s: %w", batchAllocationID, err)
	}
	return out, nil
}

// GetOrder returns a pay-in order.
func (c *Client) GetOrder(ctx context.Context, orderID string) (OrderData, error) {
	var out OrderData
	if err := c.do(ctx, "get_order", http.MethodGet, "/payments/orders/"+orderID, nil, nil, &out); err != nil {
		return OrderData{}, fmt.Errorf("get order %s: %w", orderID, err)
	}
	return out, nil
}

// do performs one call with retries. The query is encoded once, and the
// same string is sent and signed.
func (c *Client) do(ctx context.Context, endpoint, method, path string, q url.Values, body []byte, out any) error {
	u := *c.base
	// path is unescaped; EscapedPath gives the form that is sent and signed.
	u.Path = c.base.Path + path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	var lastErr error
	for attempt := 1; attempt <= c.cfg.MaxAttempts; attempt++ {
		if attempt > 1 {
			if err := backoff.Wait(ctx, c.cfg.Backoff(attempt-1)); err != nil {
				return fmt.Errorf("%w (last error: %v)", err, lastErr)
			}
		}
		retry, err := c.once(ctx, endpoint, method, &u, body, out)
		if err == nil {
			return nil
		}
		var apiErr *APIError
		if attempt > 1 && errors.As(err, &apiErr) {
			// An earlier try got no definite answer and may have taken
			// effect: the caller must not read this answer alone.
			apiErr.Retried = true
		}
		lastErr = err
		if !retry || ctx.Err() != nil {
			return err
		}
	}
	return fmt.Errorf("after %d attempts: %w", c.cfg.MaxAttempts, lastErr)
}

func (c *Client) once(ctx context.Context, endpoint, method string, u *url.URL, body []byte, out any) (retry bool, err error) {
	ctx, cancel := c.cfg.Attempt(ctx)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return false, err
	}
	// Cobo's nonce is the request time in milliseconds; each try is signed
	// afresh because the nonce is part of the signature.
	nonce := strconv.FormatInt(time.Now().UnixMilli(), 10)
	req.Header.Set(HeaderAPIKey, c.cfg.Signer.APIKey())
	req.Header.Set(HeaderAPINonce, nonce)
	req.Header.Set(HeaderAPISignature, c.cfg.Signer.Sign(method, req.URL.EscapedPath(), nonce, req.URL.RawQuery, body))
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.cfg.HTTP.Do(req)
	if err != nil {
		c.observe(endpoint, 0, 0, start)
		// Transport errors and timeouts: the server may or may not have
		// acted, so only idempotent calls are retried, which all of ours are.
		return true, fmt.Errorf("%s %s: %w", method, u.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		c.observe(endpoint, resp.StatusCode, 0, start)
		return true, fmt.Errorf("%s %s: read response: %w", method, u.Path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		c.observe(endpoint, resp.StatusCode, 0, start)
		if err := json.Unmarshal(data, out); err != nil {
			return false, fmt.Errorf("%s %s: decode %d response: %w", method, u.Path, resp.StatusCode, err)
		}
		return false, nil
	}
	apiErr := &APIError{HTTPStatus: resp.StatusCode}
	if json.Unmarshal(data, apiErr) != nil || apiErr.Message == "" {
		apiErr.Message = strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	c.observe(endpoint, resp.StatusCode, apiErr.Code, start)
	return apiErr.Retryable(), apiErr
}

func (c *Client) observe(endpoint string, status, code int, start time.Time) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(endpoint, status, code, time.Since(start))
	}
}
