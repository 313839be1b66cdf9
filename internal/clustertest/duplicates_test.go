package clustertest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/testutil"
)

// TestDuplicatesInFlightAreNot503 delivers every event twice at the same
// moment to ingest on the 3-node cluster, as Cobo may. While one copy is
// being replicated the stream refuses the other with "duplicate message id
// is in process" (10158); that is no store failure, so each pair must be
// answered 200 accepted once and 200 duplicate once, never 503.
func TestDuplicatesInFlightAreNot503(t *testing.T) {
	logs := newLogBook(t)
	c := startCluster(t)
	signer := testutil.NewSigner(t)
	ing := startIngest(t, c, signer, logs)

	const events = 300
	type answer struct {
		code   int
		status string
		err    string
	}
	answers := make([][2]answer, events)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range events {
		body := testutil.OrderEvent(fmt.Sprintf("dup-in-flight-%d", i), fmt.Sprintf("O-dif-%d", i), "M1001", "Pending", 100, "0")
		sem <- struct{}{}
		var pair sync.WaitGroup
		for k := range 2 {
			pair.Add(1)
			wg.Go(func() {
				defer pair.Done()
				resp, err := httpClient.Do(mustRequest(signer, "http://"+ing.PublicAddr()+ingest.WebhookPath, body))
				if err != nil {
					answers[i][k] = answer{err: err.Error()}
					return
				}
				defer resp.Body.Close()
				var out map[string]string
				_ = json.NewDecoder(resp.Body).Decode(&out)
				answers[i][k] = answer{code: resp.StatusCode, status: out["status"], err: out["error"]}
			})
		}
		go func() { pair.Wait(); <-sem }()
	}
	wg.Wait()
	for i, pair := range answers {
		statuses := map[string]int{}
		for _, a := range pair {
			require.Equal(t, http.StatusOK, a.code, "event %d: %+v", i, a)
			statuses[a.status]++
		}
		require.Equal(t, map[string]int{"accepted": 1, "duplicate": 1}, statuses, "event %d", i)
	}
}
