package e2e_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/testutil"
)

// TestKilledWorkerLosesNothing kills a worker while it holds unacked events
// mid-processing; another worker must end with every order complete and
// every transition committed once.
func TestKilledWorkerLosesNothing(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{})
	obs := newObserved()

	// The victim commits a few events, then hangs inside the handler, the
	// way a process that is about to be killed would.
	var seen atomic.Int32
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	victim := startWorker(t, asWorker(s), signer, func(ctx context.Context, ev events.Event, out handlers.Outcome) error {
		_ = obs.observe(ctx, ev, out)
		if seen.Add(1) > 8 {
			select {
			case <-hang:
			case <-ctx.Done():
			}
			return ctx.Err()
		}
		return nil
	})

	const orders = 10
	var all [][]byte
	for i := range orders {
		all = append(all, orderEvents(orderID("O-kill", i))...)
	}
	sendConcurrently(t, signer, s, all, 4)
	testutil.WaitFor(t, 10*time.Second, "the victim to hang", func() bool { return seen.Load() > 8 })
	victim.W.Kill()

	startWorker(t, asWorker(s), signer, obs.observe)
	for i := range orders {
		id := orderID("O-kill", i)
		testutil.WaitFor(t, 30*time.Second, "order "+id, func() bool { return orderComplete(t, s, id) })
		requireFinalOrder(t, s, id)
		fc, late := obs.counts(id)
		require.Equal(t, 1, fc, id)
		require.Equal(t, 1, late, id)
	}
}

// TestStoreDownAnswers503AndLosesNothing stops the JetStream server under a
// running ingest: webhooks get 503 so the provider retries, and once the
// server is back every event is stored and processed.
func TestStoreDownAnswers503AndLosesNothing(t *testing.T) {
	dir := t.TempDir()
	addr := testutil.FreePort(t)
	srv := testutil.StartJetStreamAt(t, dir, addr)
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{NATSURL: "nats://" + addr, StoreTimeout: 500 * time.Millisecond})
	obs := newObserved()
	startWorker(t, natsLogin{url: "nats://" + addr}, signer, obs.observe)

	evs := orderEvents("O-down")
	require.Equal(t, "accepted", postUntilStored(t, signer, s, evs[0]))

	srv.Shutdown()
	srv.WaitForShutdown()
	start := time.Now()
	code, out := post(t, signer, s, evs[1])
	require.Equal(t, http.StatusServiceUnavailable, code, out)
	require.Equal(t, "event store unavailable; retry later", out["error"], "no internals in the answer")
	require.Less(t, time.Since(start), 2*time.Second, "the answer must beat Cobo's 2 s deadline")
	code, _ = getJSON(t, "http://"+s.AdminAddr()+"/readyz", nil)
	require.Equal(t, http.StatusServiceUnavailable, code)

	testutil.StartJetStreamAt(t, dir, addr)
	// The provider retries everything that was not answered 200.
	for _, ev := range evs[1:] {
		postUntilStored(t, signer, s, ev)
	}
	testutil.WaitFor(t, 30*time.Second, "order O-down", func() bool { return orderComplete(t, s, "O-down") })
	requireFinalOrder(t, s, "O-down")
	fc, late := obs.counts("O-down")
	require.Equal(t, 1, fc)
	require.Equal(t, 1, late)
}

// TestIngestRestartKeepsStreamAndState restarts the ingest process (and its
// embedded JetStream) on the same data dir.
func TestIngestRestartKeepsStreamAndState(t *testing.T) {
	dir := t.TempDir()
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{DataDir: dir})
	w := startWorker(t, asWorker(s), signer, nil)
	evs := orderEvents("O-restart")
	for _, ev := range evs {
		require.Equal(t, "accepted", postUntilStored(t, signer, s, ev))
	}
	testutil.WaitFor(t, 20*time.Second, "order O-restart", func() bool { return orderComplete(t, s, "O-restart") })
	w.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))

	s2 := startIngest(t, signer, ingest.Config{DataDir: dir})
	requireFinalOrder(t, s2, "O-restart")
	require.EqualValues(t, len(evs), streamMsgs(t, asWorker(s2)))
	// The dedup window survives the restart.
	require.Equal(t, "duplicate", postUntilStored(t, signer, s2, evs[2]))
	// And a worker against the restarted server resumes without reprocessing
	// into a different state.
	obs := newObserved()
	startWorker(t, asWorker(s2), signer, obs.observe)
	extra := testutil.TransactionEvent("O-restart-late2", "late", "O-restart", "O-restart-tx3", "1.5")
	require.Equal(t, "accepted", postUntilStored(t, signer, s2, extra))
	testutil.WaitFor(t, 20*time.Second, "second late payment", func() bool {
		v, ok := getOrder(t, s2, "O-restart")
		return ok && len(v.LatePayments) == 2
	})
	fc, late := obs.counts("O-restart")
	require.Equal(t, 0, fc, "completion happened before the restart")
	require.Equal(t, 1, late)
}
