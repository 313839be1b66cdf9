package webhook_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/webhook"
)

// The real store implements the interface the handler declares.
var _ webhook.Store = (*events.Publisher)(nil)

// fakeStore answers as a store would: duplicates by event id, an error when
// told, and can hold requests until released.
type fakeStore struct {
	mu   sync.Mutex
	seen map[string]bool
	err  error
	// hold, when set, keeps each call until closed; entered then gets a
	// value as each call starts waiting.
	hold    chan struct{}
	entered chan struct{}
}

func (f *fakeStore) Store(ctx context.Context, d cobo.Delivery) (bool, error) {
	if f.hold != nil {
		f.entered <- struct{}{}
		select {
		case <-f.hold:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	dup := f.seen[d.EventID]
	f.seen[d.EventID] = true
	return dup, nil
}

type fixture struct {
	key   ed25519.PrivateKey
	store *fakeStore
	h     *webhook.Handler
	now   time.Time
}

func newFixture(t *testing.T, cfg webhook.Config) *fixture {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	v, err := cobo.NewVerifier(hex.EncodeToString(pub))
	require.NoError(t, err)
	f := &fixture{key: key, store: &fakeStore{seen: map[string]bool{}}, now: time.UnixMilli(1700000000000)}
	cfg.Verifier, cfg.Store, cfg.Now = v, f.store, func() time.Time { return f.now }
	f.h, err = webhook.NewHandler(cfg)
	require.NoError(t, err)
	return f
}

func event(id string) []byte {
	return []byte(`{"event_id":"` + id + `","type":"payment.order.status.updated","data":{"order_id":"O1","status":"Pending"}}`)
}

// request is a POST of body signed at ts (unix ms), or unsigned.
func (f *fixture) request(body []byte, ts int64, signed bool) *http.Request {
	req := httptest.NewRequest(http.MethodPost, "/webhooks/cobo", bytes.NewReader(body))
	if signed {
		t := strconv.FormatInt(ts, 10)
		req.Header.Set(cobo.HeaderTimestamp, t)
		req.Header.Set(cobo.HeaderSignature, cobo.SignWebhook(f.key, body, t))
	}
	return req
}

func (f *fixture) serve(req *http.Request) (int, map[string]string) {
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	var out map[string]string
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

func TestAnswers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, webhook.Config{MaxBodyBytes: 1024, MaxSkew: time.Minute})
	ms := f.now.UnixMilli()

	code, out := f.serve(f.request(event("e1"), ms, true))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]string{"status": "accepted", "event_id": "e1"}, out)
	code, out = f.serve(f.request(event("e1"), ms, true))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "duplicate", out["status"])

	cases := []struct {
		name string
		req  *http.Request
		code int
		want string
	}{
		{"unsigned", f.request(event("e2"), ms, false), http.StatusUnauthorized, "missing signature"},
		{"skewed", f.request(event("e2"), ms-2*time.Minute.Milliseconds(), true), http.StatusUnauthorized, "stale or future timestamp"},
		{"not JSON", f.request([]byte("nope"), ms, true), http.StatusBadRequest, "malformed event"},
		{"too large", f.request([]byte(`{"event_id":"`+strings.Repeat("x", 2000)+`"}`), ms, true), http.StatusRequestEntityTooLarge, "body too large"},
		{"GET", httptest.NewRequest(http.MethodGet, "/webhooks/cobo", nil), http.StatusMethodNotAllowed, "method not allowed"},
	}
	for _, c := range cases {
		code, out := f.serve(c.req)
		require.Equal(t, c.code, code, c.name)
		require.Contains(t, out["error"], c.want, c.name)
	}
	bad := f.request(event("e3"), ms, true)
	bad.Header.Set(cobo.HeaderSignature, strings.Repeat("ab", 64))
	code, out = f.serve(bad)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Contains(t, out["error"], "no trusted key verifies it")
}

func TestStoreFailureIs503WithoutInternals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, webhook.Config{})
	f.store.err = errors.New("nats: no response from stream at 10.1.2.3:4222")
	code, out := f.serve(f.request(event("e1"), f.now.UnixMilli(), true))
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, map[string]string{"error": "event store unavailable; retry later"}, out)
}

// countingBody counts the bytes the handler reads.
type countingBody struct {
	r    io.Reader
	read int
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	return n, err
}
func (c *countingBody) Close() error { return nil }

func TestSignatureHeadersAreCheckedBeforeTheBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t, webhook.Config{})
	for _, sig := range []string{"", "abcd", strings.Repeat("zz", 64)} {
		body := &countingBody{r: bytes.NewReader(bytes.Repeat([]byte("x"), 1<<20))}
		req := httptest.NewRequest(http.MethodPost, "/webhooks/cobo", nil)
		req.Body = body
		req.Header.Set(cobo.HeaderTimestamp, "1700000000000")
		if sig != "" {
			req.Header.Set(cobo.HeaderSignature, sig)
		}
		code, _ := f.serve(req)
		require.Equal(t, http.StatusUnauthorized, code, "signature %q", sig)
		require.Zero(t, body.read, "no byte of the body is read without well-formed signature headers")
	}
	// A declared length over the limit is refused unread too.
	req := f.request(event("e1"), f.now.UnixMilli(), true)
	body := &countingBody{r: req.Body}
	req.Body, req.ContentLength = body, 2<<20
	code, _ := f.serve(req)
	require.Equal(t, http.StatusRequestEntityTooLarge, code)
	require.Zero(t, body.read)
}

func TestRequestsBeyondMaxInFlightGetAFast503(t *testing.T) {
	t.Parallel()
	f := newFixture(t, webhook.Config{MaxInFlight: 2, StoreTimeout: time.Minute})
	f.store.hold, f.store.entered = make(chan struct{}), make(chan struct{}, 2)
	ms := f.now.UnixMilli()
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for _, id := range []string{"a", "b"} {
		wg.Go(func() {
			code, _ := f.serve(f.request(event(id), ms, true))
			codes <- code
		})
	}
	// Both slots are taken once the store holds both requests.
	<-f.store.entered
	<-f.store.entered
	code, out := f.serve(f.request(event("c"), ms, true))
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "too many requests in flight; retry later", out["error"])

	close(f.store.hold)
	wg.Wait()
	close(codes)
	for code := range codes {
		require.Equal(t, http.StatusOK, code)
	}
	f.store.entered = make(chan struct{}, 1)
	code, _ = f.serve(f.request(event("c"), ms, true))
	require.Equal(t, http.StatusOK, code, "a freed slot is used again")
}
