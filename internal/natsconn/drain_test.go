package natsconn_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/testutil"
)

func TestDrainFinishesHeldMessagesThenCloses(t *testing.T) {
	srv := testutil.StartJetStream(t)
	nc, _ := testutil.Connect(t, srv)
	var handled atomic.Int32
	_, err := nc.Subscribe("drain.soft", func(*nats.Msg) {
		time.Sleep(100 * time.Millisecond)
		handled.Add(1)
	})
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, nc.Publish("drain.soft", nil))
	}
	require.NoError(t, nc.Flush())
	natsconn.Drain(nc, 5*time.Second)
	require.True(t, nc.IsClosed())
	require.Equal(t, int32(3), handled.Load(), "the soft stop lets the subscription finish what it held")
}

func TestDrainStopsHardAfterTheWait(t *testing.T) {
	srv := testutil.StartJetStream(t)
	nc, _ := testutil.Connect(t, srv)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	_, err := nc.Subscribe("drain.hard", func(*nats.Msg) { <-release })
	require.NoError(t, err)
	require.NoError(t, nc.Publish("drain.hard", nil))
	require.NoError(t, nc.Flush())
	start := time.Now()
	natsconn.Drain(nc, 200*time.Millisecond)
	require.True(t, nc.IsClosed())
	require.Less(t, time.Since(start), 2*time.Second, "a handler that never returns does not hold the stop")

	natsconn.Drain(nc, time.Second) // closed already: nothing to do
	natsconn.Drain(nil, time.Second)
}
