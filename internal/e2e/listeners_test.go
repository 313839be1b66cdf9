package e2e_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/testutil"
	"github.com/paystream/paystream/internal/worker"
)

// TestWorkerMetricsListenerToken: with a token, the worker's metrics need
// it; the probes never do, so that orchestrators can call them.
func TestWorkerMetricsListenerToken(t *testing.T) {
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{})
	w := testutil.RunWorker(t, worker.Config{
		NATSURL: s.NATSURL(), NATSOptions: s.Credentials().Login(natsembed.UserWorker), Verifier: signer.Verifier(t),
		MetricsListen: "127.0.0.1:0", MetricsToken: "m3trics", Consumer: testConsumerConfig(), StreamWait: 10 * time.Second,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	base := "http://" + w.W.MetricsAddr()
	code, _ := getJSON(t, base+"/metrics", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = getJSON(t, base+"/metrics", http.Header{"Authorization": {"Bearer m3trics"}})
	require.Equal(t, http.StatusOK, code)
	for _, probe := range []string{"/healthz", "/readyz"} {
		code, _ = getJSON(t, base+probe, nil)
		require.Equal(t, http.StatusOK, code, probe)
	}
}

// TestProfilerNeedsLoopbackOrToken: -pprof exposes the command line and
// CPU profiling, so it is refused on a listener others can reach unless a
// token guards it.
func TestProfilerNeedsLoopbackOrToken(t *testing.T) {
	signer := testutil.NewSigner(t)
	_, err := worker.Start(context.Background(), worker.Config{Verifier: signer.Verifier(t), MetricsListen: ":0", Pprof: true})
	require.ErrorContains(t, err, "needs MetricsToken")
	_, err = ingest.Start(context.Background(), ingest.Config{
		Listen: "127.0.0.1:0", AdminListen: "0.0.0.0:0", Pprof: true, DataDir: t.TempDir(), CoboPubKeys: []string{signer.PubHex},
	})
	require.ErrorContains(t, err, "needs AdminToken")
}
