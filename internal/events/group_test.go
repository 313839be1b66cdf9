package events_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// groupMsg is a message on the event stream with message id id.
func groupMsg(id string) *nats.Msg {
	m := nats.NewMsg(events.SubjectPrefix + ".payment_status_updated." + id)
	m.Data = []byte(`{"event_id":"` + id + `"}`)
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

// newGroupOnStream starts a JetStream server with the event stream and a
// GroupCommitter of cfg on it, closed when the test ends.
func newGroupOnStream(t *testing.T, cfg events.GroupConfig) (jetstream.JetStream, jetstream.Stream, *events.GroupCommitter) {
	t.Helper()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	stream, err := events.EnsureEventStream(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	g, err := events.NewGroupCommitter(js, events.StreamName, cfg)
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return js, stream, g
}

// publishConcurrently publishes every id at once through g and returns
// each answer by position.
func publishConcurrently(t *testing.T, g *events.GroupCommitter, ids []string) []*jetstream.PubAck {
	t.Helper()
	acks := make([]*jetstream.PubAck, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			acks[i], errs[i] = g.Publish(ctx, groupMsg(id))
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "publish %s", ids[i])
	}
	return acks
}

// Every caller is answered only with its own message stored at the
// sequence its acknowledgement names, each event is stored once, and of
// all copies of one event exactly one is reported new: whether copies met
// in one batch, in two batches (the second rolled back with 10201 and
// published one by one) or an earlier copy was stored before.
func TestGroupCommitterStoresEachEventOnceAndAnswersWithItsSequence(t *testing.T) {
	ctx := context.Background()
	_, stream, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, InFlight: 1})
	require.True(t, stream.CachedInfo().Config.AllowAtomicPublish)

	// Stored before: their copies below must be duplicates.
	pre := []string{"ev-0", "ev-1", "ev-2"}
	for _, ack := range publishConcurrently(t, g, pre) {
		require.False(t, ack.Duplicate)
	}
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("ev-%d", i%120)) // 120 events, most sent 2 or 3 times
	}
	acks := publishConcurrently(t, g, ids)

	news := map[string]int{}
	for i, ack := range acks {
		raw, err := stream.GetMsg(ctx, ack.Sequence)
		require.NoError(t, err, "the acknowledged sequence of %s is stored", ids[i])
		require.Equal(t, ids[i], raw.Header.Get(jetstream.MsgIDHeader), "the acknowledgement names the caller's own message")
		if !ack.Duplicate {
			news[ids[i]]++
		}
	}
	for i := range 120 {
		id := fmt.Sprintf("ev-%d", i)
		want := 1
		if i < len(pre) {
			want = 0
		}
		require.Equal(t, want, news[id], "copies of %s reported new", id)
	}
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 120, info.State.Msgs, "each event stored once")
	// Copies of stored events make most batches above roll back (10201)
	// and fall back; new events only are grouped. How many wait at once
	// depends on scheduling, so rounds go on until one batch committed.
	for round := 0; ; round++ {
		if batches, _, _ := g.Stats(); batches > 0 {
			break
		}
		require.Less(t, round, 50, "concurrent publishes of new events were never grouped into an atomic batch")
		var fresh []string
		for i := range 100 {
			fresh = append(fresh, fmt.Sprintf("new-%d-%d", round, i))
		}
		for _, ack := range publishConcurrently(t, g, fresh) {
			require.False(t, ack.Duplicate)
		}
	}
}

// A stream created before atomic batches were enabled refuses them; the
// committer then stores every event on its own, and nothing is lost.
func TestGroupCommitterFallsBackOnAStreamWithoutAtomicBatches(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: events.StreamName, Subjects: []string{events.SubjectPrefix + ".>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)

	g, err := events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{MinBatch: 2, InFlight: 1})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	for range 3 {
		var ids []string
		for i := range 100 {
			ids = append(ids, fmt.Sprintf("ev-%d", i))
		}
		publishConcurrently(t, g, ids)
	}
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 100, info.State.Msgs)
	batches, _, _ := g.Stats()
	require.Zero(t, batches)
}

// After Close, Publish fails instead of waiting for ever.
func TestGroupCommitterClosed(t *testing.T) {
	t.Parallel()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	g, err := events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{})
	require.NoError(t, err)
	g.Close()
	_, err = g.Publish(context.Background(), groupMsg("ev-1"))
	require.ErrorIs(t, err, events.ErrCommitterClosed)
}

func TestGroupConfigValidateNamesTheField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  events.GroupConfig
		want string
	}{
		{events.GroupConfig{MinBatch: 1}, "MinBatch"},
		{events.GroupConfig{MaxBatch: 1001}, "MaxBatch"},
		{events.GroupConfig{MinBatch: 10, MaxBatch: 5}, "MaxBatch"},
		{events.GroupConfig{InFlight: -1}, "InFlight"},
		{events.GroupConfig{Linger: time.Second}, "Linger"},
	} {
		require.ErrorContains(t, tc.cfg.WithDefaults().Validate(), tc.want)
	}
}

// TestGroupCommitterWaitsForTheCallersOfTheLastBatch: publishers that each
// publish again as soon as they are answered share batches. Without the
// linger, the callers queued while a batch was stored made the next batch
// on their own, and batches settled at half the publishers (measured: 32
// messages per batch with 64 publishers; 59 with it). The linger here is
// long enough that the returning callers are always in time.
func TestGroupCommitterWaitsForTheCallersOfTheLastBatch(t *testing.T) {
	t.Parallel()
	const publishers, rounds = 16, 12
	_, stream, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, Linger: 40 * time.Millisecond})
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for r := range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := g.Publish(ctx, groupMsg(fmt.Sprintf("linger-%d-%d", p, r)))
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	info, err := stream.Info(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, publishers*rounds, info.State.Msgs)
	batches, batched, fallbacks := g.Stats()
	require.Zero(t, fallbacks)
	// Every publisher is in every batch but the first few, which form
	// while the publishers start.
	require.Greater(t, float64(batched)/float64(batches), 0.75*publishers, "%d messages in %d batches", batched, batches)
}

// TestGroupCommitterWithoutLinger: a negative Linger never waits, and
// every message is stored all the same.
func TestGroupCommitterWithoutLinger(t *testing.T) {
	t.Parallel()
	_, stream, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, Linger: -1})
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprintf("nolinger-%d", i)
	}
	for range 2 {
		for _, ack := range publishConcurrently(t, g, ids) {
			require.NotNil(t, ack)
		}
	}
	info, err := stream.Info(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, len(ids), info.State.Msgs)
}
