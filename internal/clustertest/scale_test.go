package clustertest_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// progress is what a poller saw of one order so far.
type progress struct {
	rank     int
	final    domain.OrderStatus
	deposits int
	late     int
}

// monotonic polls every order's stored state and records any step back:
// a lower status rank, a different final status, or fewer deposits or
// late payments than an earlier read.
type monotonic struct {
	mu         sync.Mutex
	seen       map[string]progress
	regressed  []string
	reads      int
	readErrors int
}

// readLeader reads the stored order from the orders bucket's leader
// ($JS.API.STREAM.MSG.GET), so that successive reads observe the store's
// own order of commits; a direct get may be answered by a follower that
// has not applied the latest commit yet.
func readLeader(nc *nats.Conn, orderID string) (*domain.Order, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": "$KV." + events.OrdersBucket + "." + events.OrderKey(orderID)})
	if err != nil {
		return nil, err
	}
	msg, err := nc.Request("$JS.API.STREAM.MSG.GET.KV_"+events.OrdersBucket, req, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("get order %s: %w", orderID, err)
	}
	var resp struct {
		Message *struct {
			Data []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("decode order %s: %w", orderID, err)
	}
	if resp.Error != nil {
		if resp.Error.Code == 404 {
			return nil, nil
		}
		return nil, fmt.Errorf("get order %s: %s", orderID, resp.Error.Description)
	}
	var o domain.Order
	if err := json.Unmarshal(resp.Message.Data, &o); err != nil {
		return nil, fmt.Errorf("decode order %s: %w", orderID, err)
	}
	return &o, nil
}

func (m *monotonic) observe(orderID string, o *domain.Order) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	if o == nil {
		if _, ok := m.seen[orderID]; ok {
			m.regressed = append(m.regressed, orderID+": existed, then not found")
		}
		return
	}
	now := progress{rank: o.Status.Rank(), deposits: len(o.Deposits), late: len(o.LatePayments)}
	if o.Status.Final() {
		now.final = o.Status
	}
	before := m.seen[orderID]
	switch {
	case now.rank < before.rank:
		m.regressed = append(m.regressed, fmt.Sprintf("%s: status rank %d after %d (%s)", orderID, now.rank, before.rank, o.Status))
	case before.final != "" && now.final != before.final:
		m.regressed = append(m.regressed, fmt.Sprintf("%s: final status %s after %s", orderID, now.final, before.final))
	case now.deposits < before.deposits || now.late < before.late:
		m.regressed = append(m.regressed, fmt.Sprintf("%s: %d deposits, %d late payments after %d, %d", orderID, now.deposits, now.late, before.deposits, before.late))
	}
	m.seen[orderID] = now
}

// TestWorkersJoinAndLeaveUnderLoad changes the set of workers while
// webhooks flow: one worker, then three, then one stopped softly and one
// killed mid-stream, then a fresh one. The shared consumer must spread the
// work over the workers present, and no order's stored state may ever step
// back.
func TestWorkersJoinAndLeaveUnderLoad(t *testing.T) {
	logs := newLogBook(t)
	c := startCluster(t)
	adminNC, admin := c.connect(t, adminUser, nil)
	signer := testutil.NewSigner(t)
	ing := startIngest(t, c, signer, logs)
	obs := newObserved()
	w1 := startWorker(t, c, signer, "w1", obs, logs, nil)

	orders := histories("O-scale", 48)
	var bodies [][]byte
	for i := range 5 {
		for _, h := range orders {
			if i < len(h.events) {
				bodies = append(bodies, h.events[i])
			}
		}
	}

	// Poll every order's stored state until the webhooks are all sent
	// and every order is final, for at most 60s.
	mono := &monotonic{seen: map[string]progress{}}
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			for _, h := range orders {
				o, err := readLeader(adminNC, h.orderID)
				if err != nil {
					// A read may time out while a leader moves; the next
					// round reads again.
					mono.mu.Lock()
					mono.readErrors++
					mono.mu.Unlock()
					continue
				}
				mono.observe(h.orderID, o)
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	s := &sender{delivered: map[string]delivery{}}
	s.send(bodies, 2, 30*time.Millisecond, func(b []byte) (delivery, error) { return deliver(signer, ing, b) })
	at := func(fraction float64, what string) {
		t.Helper()
		testutil.WaitFor(t, 30*time.Second, what, func() bool { return float64(s.sent.Load()) >= fraction*float64(len(bodies)) })
	}

	at(0.15, "15% sent")
	startWorker(t, c, signer, "w2", obs, logs, nil)
	w3 := startWorker(t, c, signer, "w3", obs, logs, nil)
	at(0.4, "40% sent")
	w1.Stop(t)
	at(0.55, "55% sent")
	w3.Kill()
	at(0.7, "70% sent")
	startWorker(t, c, signer, "w4", obs, logs, nil)
	s.wg.Wait()
	require.Empty(t, s.errs, "every webhook must be stored")

	for _, h := range orders {
		testutil.WaitFor(t, 30*time.Second, "order "+h.orderID, func() bool {
			v, ok := getOrder(t, ing, h.orderID)
			return ok && h.reached(v)
		})
	}
	close(stopPoll)
	<-pollDone

	for _, h := range orders {
		h.requireFinal(t, ing)
		h.requireReportedOnce(t, obs, logs, admin)
	}
	mono.mu.Lock()
	require.Empty(t, mono.regressed, "stored order state stepped back")
	require.Greater(t, mono.reads, 10*len(orders), "the poller saw the run")
	t.Logf("%d reads of stored state, %d failed", mono.reads, mono.readErrors)
	mono.mu.Unlock()

	perWorker := obs.workers()
	t.Logf("events handled per worker: %v", perWorker)
	busy := 0
	for _, n := range perWorker {
		if n > 0 {
			busy++
		}
	}
	require.GreaterOrEqual(t, busy, 3, "the work spread over the workers that came and went")
	require.Positive(t, perWorker["w4"], "a worker joining late gets work")
	require.EqualValues(t, len(bodies), streamMsgs(t, admin, events.StreamName))
	require.Zero(t, streamMsgs(t, admin, events.DLQStreamName), "nothing dead-lettered")
	c.requireNoViolations(t)
}
