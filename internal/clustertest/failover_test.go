package clustertest_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// sender delivers webhooks from a few goroutines the way Cobo does: each
// one resent until answered 200. It records every answer.
type sender struct {
	mu        sync.Mutex
	delivered map[string]delivery // by webhook body
	errs      []error
	sent      atomic.Int64
	retried   atomic.Int64
	wg        sync.WaitGroup
}

// send delivers bodies with deliverFn from n goroutines in the background,
// each pausing pace after a webhook; s.wg.Wait waits for all of them.
func (s *sender) send(bodies [][]byte, n int, pace time.Duration, deliverFn func([]byte) (delivery, error)) {
	work := make(chan []byte)
	for range n {
		s.wg.Go(func() {
			for b := range work {
				d, err := deliverFn(b)
				s.mu.Lock()
				if err != nil {
					s.errs = append(s.errs, err)
				} else {
					s.delivered[string(b)] = d
					if d.attempts > 1 {
						s.retried.Add(1)
					}
				}
				s.mu.Unlock()
				s.sent.Add(1)
				time.Sleep(pace)
			}
		})
	}
	s.wg.Go(func() {
		for _, b := range bodies {
			work <- b
		}
		close(work)
	})
}

// TestStreamLeaderKilledUnderLoad kills the node leading the event stream
// while ingest accepts webhooks and three workers process them, all with
// three replicas. Webhooks refused during the election are resent until
// stored, as Cobo does; every webhook answered 200 must end in the order
// state, and nothing may be applied twice.
func TestStreamLeaderKilledUnderLoad(t *testing.T) {
	logs := newLogBook(t)
	c := startCluster(t)
	_, admin := c.connect(t, adminUser, nil)
	signer := testutil.NewSigner(t)
	ing := startIngest(t, c, signer, logs)
	obs := newObserved()
	for _, name := range []string{"w1", "w2", "w3"} {
		startWorker(t, c, signer, name, obs, logs, nil)
	}

	// Make the node ingest is connected to the stream's leader, so that the
	// kill both moves the leadership and cuts ingest off until it
	// reconnects: webhooks in that window are answered 503.
	target := c.clientNode(t, "paystream-ingest")
	moveLeaderTo(t, admin, events.StreamName, target)
	leader := streamInfo(t, admin, events.StreamName).Cluster.Leader
	require.Equal(t, target, leader)

	orders := histories("O-fail", 40)
	var bodies [][]byte
	// Interleave the orders so that every order is in flight across the
	// kill: first events of all orders, then second events, and so on.
	for i := range 5 {
		for _, h := range orders {
			if i < len(h.events) {
				bodies = append(bodies, h.events[i])
			}
		}
	}
	s := &sender{delivered: map[string]delivery{}}
	s.send(bodies, 4, 10*time.Millisecond, func(b []byte) (delivery, error) { return deliver(signer, ing, b) })

	testutil.WaitFor(t, 20*time.Second, "a third of the webhooks sent", func() bool { return s.sent.Load() >= int64(len(bodies)/3) })
	victim := c.node(t, leader)
	c.kill(t, victim)
	t.Logf("killed %s, the %s leader, after %d of %d webhooks", leader, events.StreamName, s.sent.Load(), len(bodies))

	s.wg.Wait()
	require.Empty(t, s.errs, "every webhook must be stored eventually")
	require.Len(t, s.delivered, len(bodies))
	require.NotZero(t, s.retried.Load(), "webhooks sent while ingest was cut off are answered 503 and resent")
	t.Logf("%d webhooks needed resending", s.retried.Load())

	info := streamInfo(t, admin, events.StreamName)
	require.NotEqual(t, leader, info.Cluster.Leader, "a new leader took over")
	// Every webhook answered 200 is stored exactly once: retries of one
	// that was stored after all collapse on its event_id.
	require.EqualValues(t, len(bodies), info.State.Msgs)

	for _, h := range orders {
		testutil.WaitFor(t, 30*time.Second, "order "+h.orderID, func() bool {
			v, ok := getOrder(t, ing, h.orderID)
			return ok && h.reached(v)
		})
		h.requireFinal(t, ing)
		h.requireReportedOnce(t, obs, logs, admin)
	}
	require.Zero(t, streamMsgs(t, admin, events.DLQStreamName), "nothing dead-lettered")
	c.requireNoViolations(t)
}

// moveLeaderTo asks the leader of stream to step down in favour of node,
// at most 10 times.
func moveLeaderTo(t *testing.T, admin jetstream.JetStream, stream, node string) {
	t.Helper()
	for range 10 {
		if streamInfo(t, admin, stream).Cluster.Leader == node {
			return
		}
		req := []byte(`{"placement":{"preferred":"` + node + `"}}`)
		_, err := admin.Conn().Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 5*time.Second)
		require.NoError(t, err)
		testutil.WaitFor(t, 10*time.Second, "a leader of "+stream, func() bool { return streamInfo(t, admin, stream).Cluster.Leader != "" })
	}
	t.Fatalf("the leader of %s does not move to %s", stream, node)
}
