package allocation

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/bitgo"
)

func requestWithNonce(t *testing.T, nonce string) bitgo.Request {
	t.Helper()
	body, err := json.Marshal(map[string]any{"clientExternalId": "ext", "nonce": nonce, "amount": map[string]string{"currency": "ofcusdt", "quantity": "1"}})
	require.NoError(t, err)
	return bitgo.Request{ConnectionID: "conn-1", ClientExternalID: "ext", Body: body}
}

func TestBitGoRecordHistoryIsBounded(t *testing.T) {
	var rec BitGoRecord
	for i := range 3 * maxHistory {
		rec.sign(requestWithNonce(t, fmt.Sprintf("n%02d", i)), fmt.Sprintf("why %d", i))
		require.Equal(t, fmt.Sprintf("n%02d", i), rec.current().Nonce)
		require.Equal(t, fmt.Sprintf("n%02d", i), rec.Request.Nonce())
	}
	require.Len(t, rec.History, maxHistory)
	require.Equal(t, "n00", rec.History[0].Nonce, "the first request is kept")
	for i, h := range rec.History[1:] {
		require.Equal(t, fmt.Sprintf("n%02d", 2*maxHistory+1+i), h.Nonce, "then the latest, in order")
	}
}

func TestBitGoRecordUpgrade(t *testing.T) {
	created := time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)
	// Persisted by a version that counted sends after making them: it may
	// have been sent although it says 0 attempts.
	rec := BitGoRecord{Request: requestWithNonce(t, "old"), CreatedAt: created}
	rec.upgrade()
	require.True(t, rec.Unclear, "looked up before anything is sent")
	require.Equal(t, 1, rec.Sends, "counted sent, so a refusal never fails it")
	require.Equal(t, []BitGoSigned{{Nonce: "old", SignedAt: created, Why: "first"}}, rec.History)

	rec = BitGoRecord{Request: requestWithNonce(t, "old"), Attempts: 3, LastError: "http 500", CreatedAt: created}
	rec.upgrade()
	require.Equal(t, 3, rec.Sends)
	require.Equal(t, BitGoSigned{Nonce: "old", SignedAt: created, Why: "first", Sends: 3, Last: "http 500"}, rec.History[0])

	rec = BitGoRecord{Request: requestWithNonce(t, "old"), Attempts: 1, Status: bitgo.StatusReserved, AllocationID: "a1", CreatedAt: created}
	rec.upgrade()
	require.False(t, rec.Unclear, "a reserved allocation is polled, not looked up")

	// A current record is left alone.
	before := rec
	rec.upgrade()
	require.Equal(t, before, rec)
}
