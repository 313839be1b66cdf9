package loadgen_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/loadgen"
)

// A stand-in for ingest that verifies every request as ingest does and
// answers like it: presigned or not, every request must verify, and the
// result must count what the server saw.
func TestRunSendsVerifiableWebhooks(t *testing.T) {
	key := loadgen.KeyFromSeed("test-seed")
	verifier, err := cobo.NewVerifier(loadgen.PublicKeyHex(key))
	require.NoError(t, err)
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := verifier.Verify(body, r.Header.Get(cobo.HeaderTimestamp), r.Header.Get(cobo.HeaderSignature)); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		env, err := cobo.ParseEnvelope(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		seen[env.EventID]++
		n := seen[env.EventID]
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n > 1 {
			_, _ = io.WriteString(w, `{"status":"duplicate"}`)
			return
		}
		_, _ = io.WriteString(w, `{"status":"accepted"}`)
	}))
	t.Cleanup(srv.Close)

	for _, presign := range []bool{false, true} {
		res, err := loadgen.Run(t.Context(), loadgen.Options{
			URL: srv.URL, Key: key, N: 200, Duration: 30 * time.Second, Concurrency: 8, RunID: "t", Presign: presign,
		})
		require.NoError(t, err)
		require.EqualValues(t, 200, res.Sent, "presign=%v", presign)
		require.Zero(t, res.Failed, "presign=%v: %v", presign, res.Codes)
		if presign {
			// The same run id sends the same event ids again.
			require.EqualValues(t, 200, res.Duplicates)
		} else {
			require.EqualValues(t, 200, res.Stored)
		}
		require.Positive(t, res.CPUus, "the generator's CPU per request is measured")
	}
	require.Len(t, seen, 200)
}

func TestHintWhenEveryAnswerIs401(t *testing.T) {
	t.Parallel()
	require.Contains(t, loadgen.Result{Sent: 3, Codes: map[string]int64{"401": 3}}.Hint("abcd"), "-cobo-pubkey abcd")
	require.Empty(t, loadgen.Result{Sent: 3, Codes: map[string]int64{"401": 2, "200": 1}}.Hint("abcd"))
	require.Empty(t, loadgen.Result{}.Hint("abcd"))
}
