package events_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

func TestEnsureStreamCreatesButNeverChanges(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))

	var logs bytes.Buffer
	cfg := events.StreamConfig{MaxAge: 48 * time.Hour, Logger: zerolog.New(&logs)}
	s, err := events.EnsureEventStream(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, 48*time.Hour, s.CachedInfo().Config.MaxAge)
	require.Empty(t, logs.String(), "a stream just created has no drift")

	// An operator gives the stream a republish rule and a longer MaxAge.
	edited := s.CachedInfo().Config
	edited.MaxAge = 72 * time.Hour
	edited.RePublish = &jetstream.RePublish{Source: ">", Destination: "audit.>"}
	_, err = js.UpdateStream(ctx, edited)
	require.NoError(t, err)

	// A process with other settings starts: it keeps the stream as it is
	// and says how it differs.
	s, err = events.EnsureEventStream(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, 72*time.Hour, s.CachedInfo().Config.MaxAge)
	require.NotNil(t, s.CachedInfo().Config.RePublish)
	require.Contains(t, logs.String(), `"stream":"PAYSTREAM_EVENTS"`)
	require.Contains(t, logs.String(), `MaxAge: have 72h0m0s, want 48h0m0s`)
	require.Contains(t, logs.String(), `RePublish: have > -> audit.>, want none`)
}

func TestEnsureBucketCreatesButNeverChanges(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))

	_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: events.OrdersBucket, History: 2})
	require.NoError(t, err)
	var logs bytes.Buffer
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{Logger: zerolog.New(&logs)})
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, st.History())
	require.Contains(t, logs.String(), `"bucket":"paystream_orders"`)
	require.Contains(t, logs.String(), `History: have 2, want 5`)
}

// Processes starting together on a new deployment race to create the same
// resources, with the same or with different settings: every one of them
// gets them, and exactly one configuration wins.
func TestEnsureRacingCreators(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartJetStream(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	for i := range n {
		_, js := testutil.Connect(t, srv)
		cfg := events.StreamConfig{MaxAge: time.Duration(i+1) * 24 * time.Hour}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := events.EnsureEventStream(ctx, js, cfg)
			errs <- err
			_, err = events.EnsureDLQStream(ctx, js, cfg)
			errs <- err
			_, err = events.EnsureOrdersBucket(ctx, js, events.StreamConfig{Replicas: 1})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	_, js := testutil.Connect(t, srv)
	s, err := js.Stream(ctx, events.StreamName)
	require.NoError(t, err)
	require.Contains(t, []time.Duration{1, 2, 3, 4, 5, 6, 7, 8}, s.CachedInfo().Config.MaxAge/(24*time.Hour))
}
