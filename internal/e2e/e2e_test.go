package e2e_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/testutil"
)

func TestWebhookAnswers(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{AdminToken: "s3cret"})
	url := "http://" + s.PublicAddr() + ingest.WebhookPath
	body := testutil.OrderEvent("ev-1", "O-1", "M1001", "Pending", 100, "0")

	send := func(req *http.Request) int {
		t.Helper()
		resp, err := httpClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		return resp.StatusCode
	}
	raw := func(method string, body []byte, header map[string]string) *http.Request {
		req, err := http.NewRequest(method, url, bytes.NewReader(body))
		require.NoError(t, err)
		for k, v := range header {
			req.Header[k] = []string{v}
		}
		return req
	}
	ts, sig := signer.Sign(body)

	code, out := post(t, signer, s, body)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "accepted", out["status"])
	code, out = post(t, signer, s, body)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "duplicate", out["status"])

	// A body of exactly the 1 MiB limit is legal and must be stored, not
	// refused by the store's message size limit.
	head, tail := `{"event_id":"ev-big","type":"payment.order.status.updated","data":{"order_id":"O-big","pad":"`, `"}}`
	big := []byte(head + strings.Repeat("a", 1<<20-len(head)-len(tail)) + tail)
	require.Len(t, big, 1<<20)
	code, out = post(t, signer, s, big)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "accepted", out["status"])

	// The underscore header spellings are accepted.
	body2 := testutil.OrderEvent("ev-2", "O-1", "M1001", "Completed", 200, "102")
	ts2, sig2 := signer.Sign(body2)
	code = send(raw(http.MethodPost, body2, map[string]string{"Biz_Timestamp": ts2, "Biz_Resp_Signature": sig2}))
	require.Equal(t, http.StatusOK, code)

	cases := []struct {
		name string
		req  *http.Request
		code int
	}{
		{"missing signature", raw(http.MethodPost, body, map[string]string{"Biz-Timestamp": ts}), http.StatusUnauthorized},
		{"missing timestamp", raw(http.MethodPost, body, map[string]string{"Biz-Resp-Signature": sig}), http.StatusUnauthorized},
		{"tampered body", raw(http.MethodPost, append(body, ' '), map[string]string{"Biz-Timestamp": ts, "Biz-Resp-Signature": sig}), http.StatusUnauthorized},
		{"signature of another key", testutil.NewSigner(t).Request(t, url, body), http.StatusUnauthorized},
		{"signed but not JSON", signer.Request(t, url, []byte("not json")), http.StatusBadRequest},
		{"signed but no event_id", signer.Request(t, url, []byte(`{"type":"t","data":{}}`)), http.StatusBadRequest},
		{"signed but no data", signer.Request(t, url, []byte(`{"event_id":"x","type":"t"}`)), http.StatusBadRequest},
		{"oversized", signer.Request(t, url, bytes.Repeat([]byte("a"), 1<<20+1)), http.StatusRequestEntityTooLarge},
		{"GET", raw(http.MethodGet, nil, nil), http.StatusMethodNotAllowed},
		{"PUT", raw(http.MethodPut, body, map[string]string{"Biz-Timestamp": ts, "Biz-Resp-Signature": sig}), http.StatusMethodNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := httpClient.Do(tc.req)
			require.NoError(t, err)
			defer resp.Body.Close()
			buf := new(bytes.Buffer)
			_, _ = buf.ReadFrom(resp.Body)
			require.Equal(t, tc.code, resp.StatusCode, buf.String())
			require.Contains(t, buf.String(), `"error":`)
		})
	}

	// Exactly the three accepted events are stored.
	require.EqualValues(t, 3, streamMsgs(t, asWorker(s)))

	// Orders and metrics are not on the public listener.
	for _, path := range []string{"/v1/orders/O-1", "/metrics", "/readyz"} {
		code, _ := getJSON(t, "http://"+s.PublicAddr()+path, nil)
		require.Equal(t, http.StatusNotFound, code, path)
	}
	code, _ = getJSON(t, "http://"+s.PublicAddr()+"/healthz", nil)
	require.Equal(t, http.StatusOK, code)

	// The admin listener needs the token, except for the probes, which
	// orchestrators call without one.
	code, _ = getJSON(t, "http://"+s.AdminAddr()+"/metrics", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = getJSON(t, "http://"+s.AdminAddr()+"/v1/orders/O-1", http.Header{"Authorization": {"Bearer wrong"}})
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = getJSON(t, "http://"+s.AdminAddr()+"/readyz", nil)
	require.Equal(t, http.StatusOK, code)
	auth := http.Header{"Authorization": {"Bearer s3cret"}}
	code, metrics := getJSON(t, "http://"+s.AdminAddr()+"/metrics", auth)
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		`paystream_webhook_requests_total{code="200"} 4`,
		`paystream_webhook_requests_total{code="401"} 4`,
		`paystream_webhook_requests_total{code="405"} 2`,
		`paystream_webhook_requests_total{code="413"} 1`,
		`paystream_webhook_duplicates_total 1`,
		`paystream_webhook_signature_failures_total 4`,
		`paystream_webhook_store_seconds_count 4`,
	} {
		require.Contains(t, string(metrics), want)
	}
	code, _ = getJSON(t, "http://"+s.AdminAddr()+"/v1/orders/unknown", auth)
	require.Equal(t, http.StatusNotFound, code)
}

func TestMaxSkew(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{MaxSkew: time.Minute})
	body := testutil.OrderEvent("ev-skew", "O-1", "M1001", "Pending", 100, "0")
	old := "1000000000000"
	req, err := http.NewRequest(http.MethodPost, "http://"+s.PublicAddr()+ingest.WebhookPath, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set(cobo.HeaderTimestamp, old)
	req.Header.Set(cobo.HeaderSignature, cobo.SignWebhook(signer.Key, body, old))
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	code, _ := post(t, signer, s, body)
	require.Equal(t, http.StatusOK, code)
}

// TestPipelineWithDuplicatesAndShuffles sends every order's history in a
// random order, each event up to three times and from concurrent senders,
// to two workers.
func TestPipelineWithDuplicatesAndShuffles(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{})
	obs := newObserved()
	startWorker(t, asWorker(s), signer, obs.observe)
	startWorker(t, asWorker(s), signer, obs.observe)

	const orders = 20
	var all [][]byte
	for i := range orders {
		for _, ev := range orderEvents(orderID("O-dup", i)) {
			for range 1 + rand.IntN(3) {
				all = append(all, ev)
			}
		}
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	sendConcurrently(t, signer, s, all, 8)

	for i := range orders {
		id := orderID("O-dup", i)
		testutil.WaitFor(t, 20*time.Second, "order "+id, func() bool { return orderComplete(t, s, id) })
		requireFinalOrder(t, s, id)
		fc, late := obs.counts(id)
		require.Equal(t, 1, fc, id)
		require.Equal(t, 1, late, id)
	}
	require.EqualValues(t, orders*5, streamMsgs(t, asWorker(s)), "duplicates collapse on event_id")
}

func sendConcurrently(t *testing.T, signer *testutil.Signer, s *ingest.Service, bodies [][]byte, senders int) {
	t.Helper()
	work := make(chan []byte)
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for b := range work {
				code, out := post(t, signer, s, b)
				if code != http.StatusOK {
					t.Errorf("status %d: %v", code, out)
				}
			}
		})
	}
	for _, b := range bodies {
		work <- b
	}
	close(work)
	wg.Wait()
}

// TestThreeWorkersRaceOnTheSameOrders runs three workers, each processing
// several events at once, over orders whose events are all in flight
// together; every transition must commit exactly once.
func TestThreeWorkersRaceOnTheSameOrders(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{})
	obs := newObserved()
	for range 3 {
		startWorker(t, asWorker(s), signer, obs.observe)
	}
	const orders = 15
	var all [][]byte
	for round := range 3 {
		for i := range orders {
			// Cobo may report one fact under several event_ids; give each
			// round its own ids so all three workers race on the same
			// transitions instead of collapsing at ingest.
			evs := orderEventsWithSuffix(orderID("O-race", i), fmt.Sprintf("-r%d", round))
			for j := range evs {
				all = append(all, evs[(j+round)%len(evs)])
			}
		}
	}
	sendConcurrently(t, signer, s, all, 12)
	for i := range orders {
		id := orderID("O-race", i)
		testutil.WaitFor(t, 20*time.Second, "order "+id, func() bool { return orderComplete(t, s, id) })
		requireFinalOrder(t, s, id)
		fc, late := obs.counts(id)
		require.Equal(t, 1, fc, id)
		require.Equal(t, 1, late, id)
	}
}
