package testutil

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// WaitFor polls cond every 50 ms until it holds, and fails the test after
// timeout naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Rules is the allocation rules file the tests use: 10% of M1001's orders
// to the developer account, 5% of every order to M9000, and late payments
// credited to the merchant. An orderEvents-style history of M1001 plans
// three items under it.
const Rules = `{"splits": [
   {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"},
   {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"}],
 "late_payments": "credit_merchant"}`

// GetOrder reads an order through an admin listener (ingest's), as an
// operator's curl would; false when it does not exist.
func GetOrder(t testing.TB, adminAddr, orderID string) (domain.OrderView, bool) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + adminAddr + "/v1/orders/" + url.PathEscape(orderID))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if resp.StatusCode == http.StatusNotFound {
		return domain.OrderView{}, false
	}
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	var v domain.OrderView
	require.NoError(t, json.Unmarshal(b, &v))
	return v, true
}

// SyncBuffer is a buffer a process's logger and a test may use at once.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
