package payer_test

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/sandbox/payer"
	"github.com/paystream/paystream/internal/testutil"
)

// TestTrustHintWhenEveryAnswerIs401 plays into a receiver that trusts
// another key: every attempt is answered 401, so the payer logs
// Config.TrustHint at warn level, once when the first delivery is
// abandoned and once at the end, and its stats say so.
func TestTrustHintWhenEveryAnswerIs401(t *testing.T) {
	t.Parallel()
	c := newCollector(t, newKey(t), nil) // trusts a key the payer does not sign with
	var logs testutil.SyncBuffer
	cfg := baseConfig(c.srv.URL, newKey(t))
	cfg.Orders, cfg.Duplicates, cfg.MaxAttempts, cfg.Concurrency = 4, 0, 2, 2
	cfg.Logger = zerolog.New(&logs)
	cfg.TrustHint = "start ingest with -cobo-pubkey $(bin/sandbox -print-webhook-pubkey)"
	st, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Positive(t, st.Sent)
	require.Equal(t, st.Sent, st.Unauthorized)
	require.True(t, st.EveryAnswerUnauthorized())
	require.Equal(t, 2, strings.Count(logs.String(), cfg.TrustHint), logs.String())
	require.Contains(t, logs.String(), `"level":"warn","message":"every answer so far was 401: start ingest with -cobo-pubkey $(bin/sandbox -print-webhook-pubkey)"`)
	require.Contains(t, logs.String(), `"message":"every answer was 401: start ingest`)
}

// TestNoTrustHintWhenSomeAnswersAreAccepted: a receiver that accepted one
// attempt trusts the key, so later 401s and abandoned deliveries log no
// hint.
func TestNoTrustHintWhenSomeAnswersAreAccepted(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	answered := 0 // the collector calls answer under its lock
	c := newCollector(t, key, func(string, int) int {
		answered++
		if answered == 1 {
			return http.StatusOK
		}
		return http.StatusUnauthorized
	})
	var logs testutil.SyncBuffer
	cfg := baseConfig(c.srv.URL, key)
	cfg.Orders, cfg.Duplicates, cfg.MaxAttempts, cfg.Concurrency = 4, 0, 1, 1
	cfg.Logger = zerolog.New(&logs)
	st, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Equal(t, 1, st.Accepted)
	require.Positive(t, st.Failed, "deliveries were abandoned")
	require.Equal(t, st.Sent-1, st.Unauthorized)
	require.False(t, st.EveryAnswerUnauthorized())
	require.NotContains(t, logs.String(), "was 401")
	require.False(t, payer.Stats{}.EveryAnswerUnauthorized(), "no attempt, no hint")
}

// TestDefaultTrustHintNamesTheKey: without Config.TrustHint, the hint
// names the public key to trust.
func TestDefaultTrustHintNamesTheKey(t *testing.T) {
	t.Parallel()
	c := newCollector(t, newKey(t), nil)
	var logs testutil.SyncBuffer
	key := newKey(t)
	cfg := baseConfig(c.srv.URL, key)
	cfg.Orders, cfg.MaxAttempts, cfg.Concurrency = 1, 1, 1
	cfg.Logger = zerolog.New(&logs)
	_, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	require.Contains(t, logs.String(), "trust public key "+hex.EncodeToString(key.Public().(ed25519.PublicKey)))
}
