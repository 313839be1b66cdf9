package worker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/supervise"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

var httpClient = &http.Client{Timeout: 2 * time.Second}

// stack is a real JetStream server with the event stream ingest creates.
type stack struct {
	url    string
	js     jetstream.JetStream
	signer *testutil.Signer
}

func newStack(t *testing.T) *stack {
	t.Helper()
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	_, js := testutil.Connect(t, srv)
	_, err := events.EnsureEventStream(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	return &stack{url: srv.ClientURL(), js: js, signer: testutil.NewSigner(t)}
}

// config is a worker against s; with rules, it allocates against a Cobo
// sandbox.
func (s *stack) config(t *testing.T, withRules bool) worker.Config {
	t.Helper()
	cfg := worker.Config{
		NATSURL:       s.url,
		Verifier:      s.signer.Verifier(t),
		MetricsListen: "127.0.0.1:0",
		Consumer:      events.ConsumerConfig{AckWait: 2 * time.Second, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond},
		LagInterval:   100 * time.Millisecond,
		StopTimeout:   10 * time.Second,
		Logger:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	if !withRules {
		return cfg
	}
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	srv := httptest.NewServer(cobosim.New(cobosim.Config{APIKeys: []string{api.APIKey()}, Logger: zerolog.Nop()}))
	t.Cleanup(srv.Close)
	rules, err := allocation.ParseRules([]byte(`{"splits":[{"merchant_id":"*","destination_account":"developer","share":"0.10","description":"commission"}],"late_payments":"hold"}`))
	require.NoError(t, err)
	cfg.Allocation = &worker.AllocationConfig{Rules: rules, Cobo: cobo.ClientConfig{BaseURL: srv.URL + "/v2", Signer: api}}
	return cfg
}

// store puts a signed event on the stream, as ingest does.
func (s *stack) store(t *testing.T, eventID, orderID string) {
	t.Helper()
	body := testutil.OrderEvent(eventID, orderID, "M1001", "Pending", 100, "0")
	env, err := cobo.ParseEnvelope(body)
	require.NoError(t, err)
	ts, sig := s.signer.Sign(body)
	_, err = events.NewPublisher(s.js).Store(context.Background(), cobo.Delivery{Envelope: env, Body: body, Timestamp: ts, Signature: sig, ReceivedAt: time.Now()})
	require.NoError(t, err)
}

// running is a worker whose Run's error the test reads once done is
// closed.
type running struct {
	w    *worker.Worker
	done chan struct{}
	err  error
}

func start(t *testing.T, cfg worker.Config) *running {
	t.Helper()
	w, err := worker.Start(context.Background(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, done: make(chan struct{})}
	go func() {
		r.err = w.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("worker did not stop within 15s")
		}
	})
	return r
}

// readyz is the worker's /readyz status; 0 when nothing answers (the
// listener is closed).
func (r *running) readyz() int {
	resp, err := httpClient.Get("http://" + r.w.MetricsAddr() + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (r *running) applied(orderID string) bool {
	_, _, err := r.w.Orders().Get(context.Background(), orderID)
	return err == nil
}

// TestWorkerNeverStaysReadyWithoutItsConsumer deletes a durable consumer
// the worker pulls from, under the running worker: the worker must end
// with an error naming what ended, so that its supervisor restarts it
// (which creates the consumer again), and /readyz must stop answering 200
// from then on.
func TestWorkerNeverStaysReadyWithoutItsConsumer(t *testing.T) {
	for _, tc := range []struct {
		consumer, stream string
		withRules        bool
		component        string
		cause            error
	}{
		{events.ConsumerName, events.StreamName, false, "consumer", events.ErrConsumerGone},
		{allocation.BatcherConsumer, allocation.IntentStream, true, "batcher", nil},
	} {
		t.Run(tc.consumer, func(t *testing.T) {
			s := newStack(t)
			r := start(t, s.config(t, tc.withRules))
			require.Eventually(t, func() bool { return r.readyz() == http.StatusOK }, 10*time.Second, 20*time.Millisecond)
			s.store(t, "e-before", "O-before")
			require.Eventually(t, func() bool { return r.applied("O-before") }, 10*time.Second, 20*time.Millisecond, "the worker works")

			require.NoError(t, s.js.DeleteConsumer(context.Background(), tc.stream, tc.consumer))
			s.store(t, "e-after", "O-after")

			// Not ready from the moment a component ended; the test reads
			// /readyz until the worker has exited.
			deadline := time.After(10 * time.Second)
		wait:
			for sawNotReady := false; ; {
				select {
				case <-r.done:
					break wait
				case <-deadline:
					t.Fatalf("the worker still runs without %s (ready: %d, saw not ready: %v)", tc.consumer, r.readyz(), sawNotReady)
				case <-time.After(5 * time.Millisecond):
					if code := r.readyz(); code != http.StatusOK {
						sawNotReady = true
					} else {
						require.False(t, sawNotReady, "ready again after it said it was not")
					}
				}
			}
			require.ErrorIs(t, r.err, supervise.ErrEnded)
			require.ErrorContains(t, r.err, tc.component+" ended unexpectedly")
			if tc.cause != nil {
				require.ErrorIs(t, r.err, tc.cause)
			}
			require.NotEqual(t, http.StatusOK, r.readyz(), "an exited worker answers no probe")

			// What its supervisor does: start it again, which creates the
			// consumer again, and nothing stored meanwhile is lost.
			again := start(t, s.config(t, tc.withRules))
			require.Eventually(t, func() bool { return again.applied("O-after") }, 10*time.Second, 20*time.Millisecond)
		})
	}
}

// TestWorkerStopsCleanly is the requested stop: Run returns nil.
func TestWorkerStopsCleanly(t *testing.T) {
	s := newStack(t)
	w, err := worker.Start(context.Background(), s.config(t, true))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	s.store(t, "e-1", "O-1")
	require.Eventually(t, func() bool {
		_, _, err := w.Orders().Get(context.Background(), "O-1")
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not stop within 15s")
	}
}
