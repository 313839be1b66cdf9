package events

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/natsembed"
)

// TestGroupCommitterDoesNotLingerAfterAPause: the linger is for the
// callers of the batch just committed, who come back within moments under
// load. A publish after the committer sat idle far longer than Linger is
// light load and goes at once. Before the fix the loop kept the size of
// the burst's last batch across the pause, and the lone publish waited the
// full Linger (found by review; 41 ms of a 40 ms linger, 9 runs of 9).
func TestGroupCommitterDoesNotLingerAfterAPause(t *testing.T) {
	t.Parallel()
	srv, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir()})
	require.NoError(t, err)
	// Waited for, so that none of its goroutines outlives the test (the
	// package checks for leaks).
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	_, err = EnsureEventStream(ctx, js, StreamConfig{})
	require.NoError(t, err)
	const linger = 40 * time.Millisecond
	g, err := NewGroupCommitter(js, StreamName, GroupConfig{MinBatch: 2, Linger: linger})
	require.NoError(t, err)
	t.Cleanup(g.Close)

	publish := func(id string) {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		m := nats.NewMsg(SubjectPrefix + ".payment_status_updated." + id)
		m.Data = []byte(`{"event_id":"` + id + `"}`)
		m.Header.Set(jetstream.MsgIDHeader, id)
		_, err := g.Publish(pctx, m)
		require.NoError(t, err)
	}
	// A burst: everything waiting goes as one batch or a few.
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() { publish(fmt.Sprintf("burst-%d", i)) })
	}
	wg.Wait()
	batches, _, _ := g.Stats()
	require.NotZero(t, batches, "the burst went out as at least one atomic batch")

	time.Sleep(10 * linger) // a pause: nobody is coming back
	before := g.lingers.Load()
	publish("lone")
	require.Equal(t, before, g.lingers.Load(), "a publish after a pause waited for the callers of a batch committed long before")
}
