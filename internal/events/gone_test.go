package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// TestLagPollEndsWhenAPulledConsumerIsGone covers a deletion the pull
// itself may never hear of (e.g. while the connection was away): the lag
// polls find the consumer missing and end, but only for a consumer the
// process pulls from, and only after GoneAfter polls in a row.
func TestLagPollEndsWhenAPulledConsumerIsGone(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	ctx := context.Background()
	_, err := events.EnsureEventStream(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	cons, err := events.EnsureConsumer(ctx, js, events.ConsumerConfig{})
	require.NoError(t, err)
	lag := events.NewLagCollector(prometheus.NewRegistry())

	// Not pulled: watched for lag only.
	require.NoError(t, js.DeleteConsumer(ctx, events.StreamName, events.ConsumerName))
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	require.NoError(t, lag.Poll(pctx, 20*time.Millisecond, zerolog.Nop(), events.LagTarget{Consumer: cons}))

	start := time.Now()
	err = lag.Poll(ctx, 50*time.Millisecond, zerolog.Nop(), events.LagTarget{Consumer: cons, Pulled: true})
	require.ErrorIs(t, err, events.ErrConsumerGone)
	require.ErrorContains(t, err, "consumer paystream-worker: durable consumer gone: not found 3 polls in a row")
	require.GreaterOrEqual(t, time.Since(start), time.Duration(events.GoneAfter-1)*50*time.Millisecond, "one answer is not proof")
}
