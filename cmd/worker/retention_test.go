package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/testutil"
)

// TestReconcileSinceInsideTheRetention: `worker reconcile -since` may look
// back at most -retention minus a day; further back is refused before
// anything is read.
func TestReconcileSinceInsideTheRetention(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"reconcile", "-since", "2137h", "-rules", "/nonexistent/rules.json"}, noEnv, &out, &out)
	require.ErrorIs(t, err, reconcile.ErrBeyondHorizon, "the default -retention is 90 days: 89 days back at most")
	require.ErrorContains(t, err, "-since")
	err = run(context.Background(), []string{"reconcile", "-since", "77h", "-retention", "100h", "-rules", "/nonexistent/rules.json"}, noEnv, &out, &out)
	require.ErrorIs(t, err, reconcile.ErrBeyondHorizon)
	err = run(context.Background(), []string{"reconcile", "-since", "75h", "-retention", "100h", "-rules", "/nonexistent/rules.json"}, noEnv, &out, &out)
	require.ErrorContains(t, err, "-rules", "inside the horizon the pass goes on (here to the missing rules file)")
	err = run(context.Background(), []string{"reconcile", "-retention", "500ms", "-rules", "/nonexistent/rules.json"}, noEnv, &out, &out)
	require.ErrorContains(t, err, "-retention")
}

// TestWorkerRefusesRetentionNotLongerThanTheEventStream: the event
// stream's max age is looked up at start; a -retention that is not longer
// is refused.
func TestWorkerRefusesRetentionNotLongerThanTheEventStream(t *testing.T) {
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	_, js := testutil.Connect(t, srv)
	_, err := events.EnsureEventStream(context.Background(), js, events.StreamConfig{MaxAge: 30 * 24 * time.Hour})
	require.NoError(t, err)
	signer := testutil.NewSigner(t)
	var out bytes.Buffer
	err = run(context.Background(), []string{"-nats-url", srv.ClientURL(), "-cobo-pubkey", signer.PubHex, "-metrics-listen", "-", "-retention", "720h"}, noEnv, &out, &out)
	require.ErrorIs(t, err, events.ErrRetentionTooShort)
	require.ErrorContains(t, err, "-retention 720h0m0s, event stream PAYSTREAM_EVENTS max age 720h0m0s")
}
