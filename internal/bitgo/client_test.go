package bitgo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
)

const (
	enterpriseID = "0123456789abcdef0123456789abcdef"
	connectionID = "11111111-2222-4333-8444-555555555555"
	accessToken  = "v2xsecret-test-token"
)

// env is a client wired to a simulator on loopback.
type env struct {
	sim      *bitgosim.Sim
	srv      *httptest.Server
	client   *bitgo.Client
	key      *secp256k1.PrivateKey
	requests atomic.Int32 // POSTs seen by the server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	e := &env{key: key}
	e.sim = bitgosim.New(bitgosim.Config{
		EnterpriseID: enterpriseID,
		AccessToken:  accessToken,
		SigningPub:   key.PubKey(),
		Logger:       zerolog.Nop(),
	})
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			e.requests.Add(1)
		}
		e.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	e.client = e.newClient(t, accessToken)
	return e
}

func (e *env) newClient(t *testing.T, token string) *bitgo.Client {
	t.Helper()
	c, err := bitgo.New(bitgo.Config{
		BaseURL:      e.srv.URL,
		EnterpriseID: enterpriseID,
		AccessToken:  token,
		SigningKey:   e.key,
		Currencies:   bitgo.DefaultCurrencies(),
		Config:       httpretry.Config{HTTP: e.srv.Client(), BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond},
	})
	require.NoError(t, err)
	return c
}

func (e *env) prepare(t *testing.T, externalID string) bitgo.Request {
	t.Helper()
	r, err := e.client.Prepare(connectionID, externalID, "ETH_USDT", decimal.RequireFromString("12.5"), "order 42")
	require.NoError(t, err)
	return r
}

func TestSendCleared(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, err := e.client.Send(context.Background(), e.prepare(t, "pay-1"))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.NotEmpty(t, a.ID)
	require.Equal(t, "pay-1", a.ClientExternalID)
	require.Equal(t, connectionID, a.ConnectionID)
	require.Equal(t, bitgo.Amount{Currency: "ofcusdt", Quantity: "12500000"}, a.Amount)
	require.Equal(t, "order 42", a.Notes)
	require.False(t, a.Retriable)
	require.Equal(t, []bitgo.Allocation{a}, e.sim.Allocations())
	require.EqualValues(t, 1, e.requests.Load())

	got, err := e.client.Get(context.Background(), a.ID)
	require.NoError(t, err)
	require.Equal(t, a, got)
}

func TestSendLostResponseRecordsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultLoseResponse})
	a, err := e.client.Send(context.Background(), e.prepare(t, "pay-lost"))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.EqualValues(t, 2, e.requests.Load())
	require.Equal(t, []bitgo.Allocation{a}, e.sim.Allocations())
}

func TestSendRetriesError500(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultError500, Count: 2})
	a, err := e.client.Send(context.Background(), e.prepare(t, "pay-500"))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.EqualValues(t, 3, e.requests.Load())
	require.Len(t, e.sim.Allocations(), 1)
}

func TestSendRetriesReservedRetriable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultReserveRetriable})
	a, err := e.client.Send(context.Background(), e.prepare(t, "pay-rr"))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.EqualValues(t, 2, e.requests.Load())
	require.Equal(t, []bitgo.Allocation{a}, e.sim.Allocations())
}

func TestSendGivesUpAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultError500, Count: bitgo.DefaultMaxAttempts})
	r := e.prepare(t, "pay-down")
	_, err := e.client.Send(context.Background(), r)
	require.Error(t, err)
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusInternalServerError, apiErr.HTTPStatus)
	require.True(t, apiErr.Retryable())
	require.Contains(t, err.Error(), "bitgo allocate pay-down")
	require.EqualValues(t, bitgo.DefaultMaxAttempts, e.requests.Load())
	require.Empty(t, e.sim.Allocations())

	// The caller's later resend of the persisted request succeeds once.
	a, err := e.client.Send(context.Background(), r)
	require.NoError(t, err)
	require.Equal(t, []bitgo.Allocation{a}, e.sim.Allocations())
}

func TestSendReleased(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultRelease})
	r := e.prepare(t, "pay-rel")
	a, err := e.client.Send(context.Background(), r)
	require.ErrorIs(t, err, bitgo.ErrReleased)
	var rel *bitgo.ReleasedError
	require.ErrorAs(t, err, &rel)
	require.Equal(t, bitgosim.ReasonInsufficientBalance, rel.Reason)
	require.Equal(t, bitgo.StatusReleased, rel.Allocation.Status)
	require.Equal(t, a, rel.Allocation)
	require.EqualValues(t, 1, e.requests.Load(), "a release is terminal, not retried")

	// Re-sending cannot change a released allocation.
	_, err = e.client.Send(context.Background(), r)
	require.ErrorIs(t, err, bitgo.ErrReleased)
	require.Len(t, e.sim.Allocations(), 1)
}

func TestSendWrongTokenNotRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.newClient(t, "v2xwrong-token")
	_, err := c.Send(context.Background(), e.prepare(t, "pay-401"))
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatus)
	require.False(t, apiErr.Retryable())
	require.NotContains(t, err.Error(), "v2xwrong-token")
	require.EqualValues(t, 1, e.requests.Load())
	require.Empty(t, e.sim.Allocations())
}

func TestSendWrongSigningKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	c, err := bitgo.New(bitgo.Config{
		BaseURL: e.srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken,
		SigningKey: other, Currencies: bitgo.DefaultCurrencies(), Config: httpretry.Config{HTTP: e.srv.Client()},
	})
	require.NoError(t, err)
	r, err := c.Prepare(connectionID, "pay-badsig", "ETH_USDT", decimal.RequireFromString("1"), "")
	require.NoError(t, err)
	_, err = c.Send(context.Background(), r)
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatus)
	require.Equal(t, bitgosim.MsgInvalidSignature, apiErr.Message)
	require.Empty(t, e.sim.Allocations())
}

func TestSendReservedThenGetCleared(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultReserved})
	a, err := e.client.Send(context.Background(), e.prepare(t, "pay-res"))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusReserved, a.Status)
	require.False(t, a.Retriable)

	got, err := e.client.Get(context.Background(), a.ID)
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, got.Status)
	require.Equal(t, a.ID, got.ID)
	require.Len(t, e.sim.Allocations(), 1)
}

func TestGetUnknown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, err := e.client.Get(context.Background(), "no-such-id")
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.HTTPStatus)
	require.Contains(t, err.Error(), "bitgo get allocation no-such-id")
}

func TestSendConcurrentSameRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.prepare(t, "pay-concurrent")
	const n = 10
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := e.client.Send(context.Background(), r)
			ids[i], errs[i] = a.ID, err
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, ids[0], ids[i])
	}
	all := e.sim.Allocations()
	require.Len(t, all, 1)
	require.Equal(t, ids[0], all[0].ID)
}

// cancelAfter is a transport that cancels a context once a response has
// been read in full, so that the client sees the answer and then an ended
// context.
type cancelAfter struct {
	base   http.RoundTripper
	cancel context.CancelFunc
}

func (c cancelAfter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	c.cancel()
	return resp, err
}

func TestSendContextCanceledAfterRetryableAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultError500})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := bitgo.New(bitgo.Config{
		BaseURL: e.srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken,
		SigningKey: e.key, Currencies: bitgo.DefaultCurrencies(),
		Config: httpretry.Config{HTTP: &http.Client{Transport: cancelAfter{base: e.srv.Client().Transport, cancel: cancel}}, BackoffBase: time.Hour, BackoffMax: time.Hour},
	})
	require.NoError(t, err)
	_, err = c.Send(ctx, e.prepare(t, "pay-cancel"))
	require.ErrorIs(t, err, context.Canceled)
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusInternalServerError, apiErr.HTTPStatus)
	require.EqualValues(t, 1, e.requests.Load())
	require.Empty(t, e.sim.Allocations())
}

func TestSendIncompleteRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, err := e.client.Send(context.Background(), bitgo.Request{ClientExternalID: "x"})
	require.Error(t, err)
	require.EqualValues(t, 0, e.requests.Load())
}

// TestSendAnswers covers answers the simulator does not produce.
func TestSendAnswers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		status    int
		body      string
		wantTries int32
		check     func(t *testing.T, a bitgo.Allocation, err error)
	}{
		{"429 retried", http.StatusTooManyRequests, `{"error":"slow down"}`, 3, func(t *testing.T, _ bitgo.Allocation, err error) {
			var apiErr *bitgo.APIError
			require.ErrorAs(t, err, &apiErr)
			require.Equal(t, "slow down", apiErr.Message)
			require.Contains(t, err.Error(), "gave up after 3 attempts")
		}},
		{"403 not retried", http.StatusForbidden, `{"error":"no OES license"}`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			var apiErr *bitgo.APIError
			require.ErrorAs(t, err, &apiErr)
			require.Equal(t, &bitgo.APIError{HTTPStatus: 403, Message: "no OES license"}, apiErr)
		}},
		{"400 empty body", http.StatusBadRequest, `{}`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			var apiErr *bitgo.APIError
			require.ErrorAs(t, err, &apiErr)
			require.Equal(t, "Bad Request", apiErr.Message)
		}},
		{"422 without allocation", http.StatusUnprocessableEntity, `{"error":"connection is inactive"}`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			var rel *bitgo.ReleasedError
			require.ErrorAs(t, err, &rel)
			require.Equal(t, "connection is inactive", rel.Reason)
		}},
		{"200 released", http.StatusOK, `{"allocation":{"id":"a1","clientExternalId":"ext","status":"released","reason":"partner rejected"}}`, 1, func(t *testing.T, a bitgo.Allocation, err error) {
			require.ErrorIs(t, err, bitgo.ErrReleased)
			require.Equal(t, "a1", a.ID)
		}},
		{"200 unknown status", http.StatusOK, `{"allocation":{"id":"a1","clientExternalId":"ext","status":"weird"}}`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			require.ErrorContains(t, err, `unknown status "weird"`)
		}},
		{"200 other allocation", http.StatusOK, `{"allocation":{"id":"a1","clientExternalId":"someone-else","status":"cleared"}}`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			require.ErrorContains(t, err, "someone-else")
		}},
		{"200 garbage", http.StatusOK, `<html>`, 1, func(t *testing.T, _ bitgo.Allocation, err error) {
			require.ErrorContains(t, err, "without an allocation")
		}},
		{"500 reserved retriable exhausts", http.StatusInternalServerError, `{"allocation":{"id":"r1","clientExternalId":"ext","status":"reserved","retriable":true,"reason":"busy"}}`, 3, func(t *testing.T, a bitgo.Allocation, err error) {
			var apiErr *bitgo.APIError
			require.ErrorAs(t, err, &apiErr)
			require.True(t, apiErr.Retryable())
			require.Contains(t, apiErr.Message, "busy")
			require.Equal(t, "r1", a.ID)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var tries atomic.Int32
			var mu sync.Mutex
			var seen []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tries.Add(1)
				mu.Lock()
				seen = append(seen, strings.Join([]string{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Header.Get("enterprise-id"), r.Header.Get("Content-Type")}, " "))
				mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			key, err := secp256k1.GeneratePrivateKey()
			require.NoError(t, err)
			c, err := bitgo.New(bitgo.Config{
				BaseURL: srv.URL + "/", EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
				Currencies: bitgo.DefaultCurrencies(),
				Config:     httpretry.Config{HTTP: srv.Client(), MaxAttempts: 3, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond},
			})
			require.NoError(t, err)
			a, err := c.Send(context.Background(), bitgo.Request{ConnectionID: "conn/1", ClientExternalID: "ext", Body: []byte(`{"x":1}`)})
			require.Error(t, err)
			require.Contains(t, err.Error(), "bitgo allocate ext")
			tc.check(t, a, err)
			require.Equal(t, tc.wantTries, tries.Load())
			mu.Lock()
			defer mu.Unlock()
			for _, got := range seen {
				require.Equal(t, "POST /api/network/v1/enterprises/"+enterpriseID+"/clients/connections/conn%2F1/allocations Bearer "+accessToken+" "+enterpriseID+" application/json", got)
			}
		})
	}
}

func TestSendResendsIdenticalBytes(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		first := len(bodies) == 1
		mu.Unlock()
		if first {
			// Drop the connection: a transport error, not an HTTP answer.
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		}
		_, _ = w.Write([]byte(`{"allocation":{"id":"a1","clientExternalId":"ext","status":"cleared"}}`))
	}))
	t.Cleanup(srv.Close)
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	c, err := bitgo.New(bitgo.Config{
		BaseURL: srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
		Currencies: bitgo.DefaultCurrencies(),
		Config:     httpretry.Config{HTTP: srv.Client(), BackoffBase: time.Millisecond, BackoffMax: time.Millisecond},
	})
	require.NoError(t, err)
	body := `{"amount":{"currency":"ofcusdt","quantity":"1"},"payload":"p"}`
	a, err := c.Send(context.Background(), bitgo.Request{ConnectionID: connectionID, ClientExternalID: "ext", Body: []byte(body)})
	require.NoError(t, err)
	require.Equal(t, "a1", a.ID)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{body, body}, bodies)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	good := bitgo.Config{
		BaseURL: bitgo.TestBaseURL, EnterpriseID: enterpriseID, AccessToken: accessToken,
		SigningKey: key, Currencies: bitgo.DefaultCurrencies(),
	}
	_, err = bitgo.New(good)
	require.NoError(t, err)

	cases := []struct {
		field  string
		mutate func(*bitgo.Config)
	}{
		{"BaseURL", func(c *bitgo.Config) { c.BaseURL = "" }},
		{"BaseURL", func(c *bitgo.Config) { c.BaseURL = "ftp://x" }},
		{"BaseURL", func(c *bitgo.Config) { c.BaseURL = "https://app.bitgo-test.com?x=1" }},
		{"EnterpriseID", func(c *bitgo.Config) { c.EnterpriseID = " " }},
		{"EnterpriseID", func(c *bitgo.Config) { c.EnterpriseID = "a/b" }},
		{"AccessToken", func(c *bitgo.Config) { c.AccessToken = "" }},
		{"AccessToken", func(c *bitgo.Config) { c.AccessToken = accessToken + "\n" }},
		{"SigningKey", func(c *bitgo.Config) { c.SigningKey = nil }},
		{"Currencies", func(c *bitgo.Config) { c.Currencies = nil }},
		{"Currencies[X]", func(c *bitgo.Config) { c.Currencies = map[string]bitgo.Currency{"X": {Name: "", Decimals: 6}} }},
		{"MaxAttempts", func(c *bitgo.Config) { c.MaxAttempts = -1 }},
		{"BackoffBase", func(c *bitgo.Config) { c.BackoffBase, c.BackoffMax = time.Second, time.Millisecond }},
	}
	for _, tc := range cases {
		cfg := good
		tc.mutate(&cfg)
		_, err := bitgo.New(cfg)
		require.Error(t, err, tc.field)
		require.Contains(t, err.Error(), tc.field)
		require.NotContains(t, err.Error(), accessToken)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := bitgo.Config{}.WithDefaults()
	require.Equal(t, bitgo.DefaultHTTPTimeout, c.HTTP.Timeout)
	require.Equal(t, bitgo.DefaultHTTPTimeout, c.AttemptTimeout)
	require.Equal(t, bitgo.DefaultMaxAttempts, c.MaxAttempts)
	require.Equal(t, bitgo.DefaultBackoffBase, c.BackoffBase)
	require.Equal(t, bitgo.DefaultBackoffMax, c.BackoffMax)
	require.ErrorContains(t, c.Validate(), "BaseURL", "the provider's fields are checked, not only the embedded base's")
	own := &http.Client{}
	require.Same(t, own, bitgo.Config{Config: httpretry.Config{HTTP: own}}.WithDefaults().HTTP)
}

func TestNewCopiesCurrencies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cur := map[string]bitgo.Currency{"ETH_USDT": {Name: "ofcusdt", Decimals: 6}}
	c, err := bitgo.New(bitgo.Config{
		BaseURL: e.srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken,
		SigningKey: e.key, Currencies: cur, Config: httpretry.Config{HTTP: e.srv.Client()},
	})
	require.NoError(t, err)
	delete(cur, "ETH_USDT")
	_, err = c.Prepare(connectionID, "x", "ETH_USDT", decimal.NewFromInt(1), "")
	require.NoError(t, err)
}

func TestSendReplayRefusedIsReplayError(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// first answers the first try; nil drops the connection.
		first      func(w http.ResponseWriter)
		later      int
		wantReplay bool
		wantTries  int32
	}{
		{"dropped, then 400", nil, http.StatusBadRequest, true, 2},
		{"500, then 409", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, http.StatusConflict, true, 2},
		{"500, then 422", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, http.StatusUnprocessableEntity, true, 2},
		{"400 at once", func(w http.ResponseWriter) { w.WriteHeader(http.StatusBadRequest) }, http.StatusBadRequest, false, 1},
		{"500 every time", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, http.StatusInternalServerError, false, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var tries atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tries.Add(1) == 1 {
					if tc.first == nil {
						panic(http.ErrAbortHandler)
					}
					tc.first(w)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.later)
				_, _ = w.Write([]byte(`{"error":"nonce has already been used"}`))
			}))
			t.Cleanup(srv.Close)
			key, err := secp256k1.GeneratePrivateKey()
			require.NoError(t, err)
			c, err := bitgo.New(bitgo.Config{
				BaseURL: srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
				Currencies: bitgo.DefaultCurrencies(),
				Config:     httpretry.Config{HTTP: srv.Client(), MaxAttempts: 3, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond},
			})
			require.NoError(t, err)
			_, err = c.Send(context.Background(), bitgo.Request{ConnectionID: connectionID, ClientExternalID: "ext", Body: []byte(`{}`)})
			require.Error(t, err)
			require.Equal(t, tc.wantTries, tries.Load())
			var replay *bitgo.ReplayError
			require.Equal(t, tc.wantReplay, errors.As(err, &replay), "%v", err)
			if tc.wantReplay {
				require.EqualValues(t, tc.wantTries, replay.Tries)
				require.Contains(t, err.Error(), "nonce has already been used")
			}
			var apiErr *bitgo.APIError
			var rel *bitgo.ReleasedError
			require.True(t, errors.As(err, &apiErr) || errors.As(err, &rel), "the answer stays reachable: %v", err)
		})
	}
}

// listServer serves n allocations on one connection, ids in order, at
// most pageCap per page whatever pageSize asks for (BitGo's cap is not
// documented); ignorePage answers page 0 for every page.
func listServer(t *testing.T, n, pageCap int, ignorePage bool) (*httptest.Server, *atomic.Int32, *[]string) {
	t.Helper()
	var calls atomic.Int32
	var mu sync.Mutex
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		page, _ := strconv.Atoi(r.URL.Query().Get("pageNumber"))
		if ignorePage {
			page = 0
		}
		var out []bitgo.Allocation
		for i := page * pageCap; i < min(n, (page+1)*pageCap); i++ {
			out = append(out, bitgo.Allocation{ID: fmt.Sprintf("a%04d", i), ConnectionID: connectionID, ClientExternalID: fmt.Sprintf("ext-%d", i), Status: bitgo.StatusCleared})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"allocations": out})
	}))
	t.Cleanup(srv.Close)
	return srv, &calls, &queries
}

func TestFindPagesToTheEnd(t *testing.T) {
	t.Parallel()
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	client := func(srv *httptest.Server) *bitgo.Client {
		c, err := bitgo.New(bitgo.Config{
			BaseURL: srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
			Currencies: bitgo.DefaultCurrencies(),
			Config:     httpretry.Config{HTTP: srv.Client(), BackoffBase: time.Millisecond, BackoffMax: time.Millisecond},
		})
		require.NoError(t, err)
		return c
	}
	since := time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

	// A server capping pages at 3: the allocation on the third page is
	// found, although the first page is shorter than asked for.
	srv, calls, queries := listServer(t, 8, 3, false)
	a, ok, err := client(srv).Find(context.Background(), connectionID, "ext-7", since)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "a0007", a.ID)
	require.EqualValues(t, 3, calls.Load())
	q, err := url.ParseQuery((*queries)[0])
	require.NoError(t, err)
	require.Equal(t, url.Values{
		"connectionIds[]": {connectionID}, "types[]": {"allocation"}, "sortField": {"id"}, "sortDirection": {"ASC"},
		"pageNumber": {"0"}, "pageSize": {"500"}, "createdOnOrAfter": {"2026-08-01T12:00:00Z"},
	}, q)

	// Not there: "not found" only after an empty page.
	srv, calls, _ = listServer(t, 8, 3, false)
	_, ok, err = client(srv).Find(context.Background(), connectionID, "ext-missing", since)
	require.NoError(t, err)
	require.False(t, ok)
	require.EqualValues(t, 4, calls.Load())

	// A list that does not page is an error, never "not found".
	srv, calls, _ = listServer(t, 8, 3, true)
	_, ok, err = client(srv).Find(context.Background(), connectionID, "ext-missing", since)
	require.ErrorContains(t, err, "does not page")
	require.False(t, ok)
	require.EqualValues(t, 2, calls.Load())
}

// TestAttemptTimeoutBoundsOneExchange: the shared AttemptTimeout bounds
// each exchange, also with a transport that has no timeout of its own,
// and a timed-out exchange is retried like any unanswered one.
func TestAttemptTimeoutBoundsOneExchange(t *testing.T) {
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	var tries atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tries.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c, err := bitgo.New(bitgo.Config{
		BaseURL: srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
		Currencies: bitgo.DefaultCurrencies(),
		Config:     httpretry.Config{HTTP: &http.Client{}, MaxAttempts: 2, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond, AttemptTimeout: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.Get(ctx, "a1")
	require.Error(t, err)
	require.ErrorContains(t, err, "gave up after 2 attempts")
	require.EqualValues(t, 2, tries.Load())
	require.Less(t, time.Since(start), 2*time.Second)
}
