package events_test

// Adversarial tests of GroupCommitter: every answer without an error must
// name a stored message with the caller's id, each id is stored once, and
// at most one successful caller per id is told its message was new.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

type attackResult struct {
	id  string
	ack *jetstream.PubAck
	err error
}

// verifyAttack checks every successful answer against the stream and that
// no id is stored twice; it returns how many answers failed.
func verifyAttack(t *testing.T, stream jetstream.Stream, prestored map[string]bool, res []attackResult) (failed int) {
	t.Helper()
	ctx := context.Background()
	news := map[string]int{}
	succeeded := map[string]int{}
	for _, r := range res {
		if r.err != nil {
			failed++
			continue
		}
		require.NotNil(t, r.ack, "nil error needs an ack (%s)", r.id)
		raw, err := stream.GetMsg(ctx, r.ack.Sequence)
		require.NoError(t, err, "%s answered stored at %d, which is not in the stream", r.id, r.ack.Sequence)
		require.Equal(t, r.id, raw.Header.Get(jetstream.MsgIDHeader), "%s answered stored at %d, which holds another message", r.id, r.ack.Sequence)
		succeeded[r.id]++
		if !r.ack.Duplicate {
			news[r.id]++
		}
	}
	for id, n := range news {
		require.LessOrEqual(t, n, 1, "%s reported new %d times", id, n)
		require.False(t, prestored[id], "%s was stored before yet reported new", id)
	}
	// Each id is stored at most once.
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	seen := map[string]uint64{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := stream.GetMsg(ctx, seq)
		require.NoError(t, err)
		id := raw.Header.Get(jetstream.MsgIDHeader)
		prev, dup := seen[id]
		require.False(t, dup, "%s stored twice, at %d and %d", id, prev, seq)
		seen[id] = seq
	}
	// Every id some caller was told is stored, is stored.
	for id := range succeeded {
		_, ok := seen[id]
		require.True(t, ok, "%s answered stored but not in the stream", id)
	}
	return failed
}

// newAttackStream starts a server listening on TCP and creates the event
// stream on it through an in-process connection.
func newAttackStream(t *testing.T) (srvURL string, stream jetstream.Stream) {
	t.Helper()
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	_, js := testutil.Connect(t, srv)
	stream, err := events.EnsureEventStream(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	return srv.ClientURL(), stream
}

// proxy forwards NATS client connections to a server. Client-to-server
// publishes for which drop returns true are silently discarded (as if
// lost on the wire); cut closes every connection abruptly.
type proxy struct {
	ln      net.Listener
	target  string
	drop    func(hdr []byte) bool
	dropped atomic.Int64
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startProxy(t *testing.T, target string, drop func(hdr []byte) bool) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: strings.TrimPrefix(target, "nats://"), drop: drop}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(c, s); _ = c.Close() })
			p.wg.Go(func() { p.forward(s, c); _ = s.Close() })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

// cut closes the server side first, so bytes the client is still writing
// are read and lost, then the client side.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for i := 1; i < len(conns); i += 2 {
		_ = conns[i].Close()
	}
	time.Sleep(time.Millisecond)
	for i := 0; i < len(conns); i += 2 {
		_ = conns[i].Close()
	}
}

// forward copies the client protocol to the server, dropping the
// publishes p.drop selects.
func (p *proxy) forward(dst io.Writer, src io.Reader) {
	r := bufio.NewReaderSize(src, 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var payload []byte
		hpub := bytes.HasPrefix(line, []byte("HPUB "))
		if hpub || bytes.HasPrefix(line, []byte("PUB ")) {
			f := strings.Fields(string(line))
			total, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return
			}
			payload = make([]byte, total+2)
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
			if hpub && p.drop != nil {
				hlen, _ := strconv.Atoi(f[len(f)-2])
				if p.drop(payload[:hlen]) {
					p.dropped.Add(1)
					continue
				}
			}
		}
		if _, err := dst.Write(append(line, payload...)); err != nil {
			return
		}
	}
}

func connectVia(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(5*time.Millisecond), nats.ReconnectJitter(0, 0))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// hammer publishes ids through g from many goroutines, each with its own
// deadline, and returns every answer.
func hammer(g *events.GroupCommitter, ids []string, timeout time.Duration) []attackResult {
	res := make([]attackResult, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			ack, err := g.Publish(ctx, groupMsg(id))
			res[i] = attackResult{id, ack, err}
		})
	}
	wg.Wait()
	return res
}

// A non-commit batch message published fire-and-forget and lost on the
// wire must fail the commit (the server sees a gap), and the fallback
// must still store every message once with the right answers.
func TestGroupAttackLostBatchMessageFailsTheCommit(t *testing.T) {
	for _, seq := range []string{"1", "2", "5"} {
		t.Run("drop seq "+seq, func(t *testing.T) {
			srvURL, stream := newAttackStream(t)
			p := startProxy(t, srvURL, func(hdr []byte) bool {
				return bytes.Contains(hdr, []byte("Nats-Batch-Id:")) && bytes.Contains(hdr, []byte("\r\nNats-Batch-Sequence: "+seq+"\r\n")) &&
					!bytes.Contains(hdr, []byte("Nats-Batch-Commit"))
			})
			_, js := connectVia(t, p.url())
			g, err := events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{MinBatch: 2, MaxBatch: 64, InFlight: 1})
			require.NoError(t, err)
			defer g.Close()
			for round := range 5 {
				var ids []string
				for i := range 60 {
					ids = append(ids, fmt.Sprintf("r%d-ev-%d", round, i%40))
				}
				res := hammer(g, ids, 3*time.Second)
				require.Zero(t, verifyAttack(t, stream, nil, res), "every publish answered")
			}
			batches, batched, fallbacks := g.Stats()
			t.Logf("dropped %d batch messages; batches %d (%d msgs), fallbacks %d", p.dropped.Load(), batches, batched, fallbacks)
			require.Positive(t, p.dropped.Load(), "the attack dropped something")
			require.Positive(t, fallbacks)
		})
	}
}

// The connection is cut again and again while batches are in flight
// (fire-and-forget batch messages lost, commits unanswered, reconnects):
// no caller is told a message is stored that is not, or stored elsewhere.
func TestGroupAttackConnectionCutsMidBatch(t *testing.T) {
	srvURL, stream := newAttackStream(t)
	p := startProxy(t, srvURL, nil)
	_, js := connectVia(t, p.url())
	g, err := events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{MinBatch: 2, MaxBatch: 128, InFlight: 2})
	require.NoError(t, err)
	defer g.Close()

	stop := make(chan struct{})
	var cutter sync.WaitGroup
	cutter.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(60 * time.Millisecond):
				p.cut()
			}
		}
	})
	var all []attackResult
	for round := range 8 {
		var ids []string
		for i := range 150 {
			ids = append(ids, fmt.Sprintf("ev-%d", (round*97+i)%400))
		}
		all = append(all, hammer(g, ids, time.Second)...)
	}
	close(stop)
	cutter.Wait()
	failed := verifyAttack(t, stream, nil, all)
	batches, batched, fallbacks := g.Stats()
	t.Logf("%d of %d answers failed; batches %d (%d msgs), fallbacks %d", failed, len(all), batches, batched, fallbacks)
	require.Positive(t, batches)
}

// Two committer loops batch copies of the same ids at once, alongside ids
// stored before: one batch wins, the other is refused (10201) and falls
// back; each id is stored once and reported new at most once.
func TestGroupAttackSameIDsInConcurrentBatches(t *testing.T) {
	ctx := context.Background()
	js, stream, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, MaxBatch: 16, InFlight: 4})
	pre := map[string]bool{}
	for i := 0; i < 50; i += 7 {
		id := fmt.Sprintf("ev-%d", i)
		_, err := events.PublishDeduplicated(ctx, js, groupMsg(id), events.StreamName)
		require.NoError(t, err)
		pre[id] = true
	}
	var all []attackResult
	// Round 0 mixes in the ids stored before; later rounds use fresh ids,
	// each sent 4 times at once, so that the loops' batches share ids.
	for round := range 10 {
		var ids []string
		for i := range 200 {
			if round == 0 {
				ids = append(ids, fmt.Sprintf("ev-%d", i%50))
			} else {
				ids = append(ids, fmt.Sprintf("r%d-ev-%d", round, i%50))
			}
		}
		res := hammer(g, ids, 10*time.Second)
		require.Zero(t, verifyAttack(t, stream, pre, res))
		all = append(all, res...)
	}
	news := map[string]int{}
	for _, r := range all {
		if !r.ack.Duplicate {
			news[r.id]++
		}
	}
	for round := range 10 {
		for i := range 50 {
			id := fmt.Sprintf("r%d-ev-%d", round, i)
			want := 1
			if round == 0 {
				id = fmt.Sprintf("ev-%d", i)
				if pre[id] {
					want = 0
				}
			}
			require.Equal(t, want, news[id], "copies of %s reported new", id)
		}
	}
	batches, batched, fallbacks := g.Stats()
	t.Logf("batches %d (%d msgs), fallbacks %d", batches, batched, fallbacks)
}

// Close while publishers are queued and batches commit: every answer is
// either an error or a true statement about the stream, and nobody waits.
func TestGroupAttackCloseDuringTraffic(t *testing.T) {
	ctx := context.Background()
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	stream, err := events.EnsureEventStream(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	for trial := range 5 {
		g, err := events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{MinBatch: 2, MaxBatch: 32, InFlight: 2})
		require.NoError(t, err)
		var ids []string
		for i := range 600 {
			ids = append(ids, fmt.Sprintf("t%d-ev-%d", trial, i%300))
		}
		var res []attackResult
		done := make(chan struct{})
		go func() { res = hammer(g, ids, 5*time.Second); close(done) }()
		time.Sleep(time.Duration(trial) * 3 * time.Millisecond)
		g.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("publishers still waiting after Close")
		}
		closed := 0
		for _, r := range res {
			if errors.Is(r.err, events.ErrCommitterClosed) {
				closed++
			}
		}
		failed := verifyAttack(t, stream, nil, res)
		t.Logf("trial %d: %d failed (%d closed)", trial, failed, closed)
	}
}

// Callers whose deadlines pass while queued or while their batch commits
// (including an already expired batch deadline): no false success, and
// no id stored twice.
func TestGroupAttackDeadlinesExpireMidCommit(t *testing.T) {
	ctx := context.Background()
	_, stream, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, MaxBatch: 256, InFlight: 1})
	var all []attackResult
	for round := range 20 {
		var ids []string
		for i := range 300 {
			ids = append(ids, fmt.Sprintf("ev-%d", (round*31+i)%500))
		}
		timeout := time.Duration(round%5) * 200 * time.Microsecond
		all = append(all, hammer(g, ids, timeout)...)
	}
	// Let abandoned work finish, then publish everything again with time
	// to spare: each id must end stored once.
	res := hammer(g, func() (ids []string) {
		for i := range 500 {
			ids = append(ids, fmt.Sprintf("ev-%d", i))
		}
		return ids
	}(), 10*time.Second)
	all = append(all, res...)
	failed := verifyAttack(t, stream, nil, all)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 500, info.State.Msgs)
	batches, batched, fallbacks := g.Stats()
	t.Logf("%d of %d failed; batches %d (%d msgs), fallbacks %d", failed, len(all), batches, batched, fallbacks)
}

// A caller that gives up (its context ends) and retries the very same
// *nats.Msg, as one would retry a plain publish, while the committer
// still holds it: the committer writes that message's headers (batch
// headers, expected stream) concurrently with the caller's retry.
// Run with -race: a data race (or "concurrent map writes") shows that the
// committer keeps using the caller's message after Publish returned.
func TestGroupAttackRetrySameMsgAfterTimeout(t *testing.T) {
	ctx := context.Background()
	js, _, g := newGroupOnStream(t, events.GroupConfig{MinBatch: 2, MaxBatch: 256, InFlight: 1})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			m := groupMsg(fmt.Sprintf("ev-%d", i))
			short, cancel := context.WithTimeout(ctx, 50*time.Microsecond)
			_, err := g.Publish(short, m)
			cancel()
			if err == nil {
				return
			}
			// Retry the same message, as after a lost answer.
			long, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = events.PublishDeduplicated(long, js, m, events.StreamName)
			require.NoError(t, err)
		})
	}
	wg.Wait()
}

// The server keeps the batch headers on the events a batch stored.
// Dead-lettering such an event copies its headers; before the copy left
// them out, the dead-letter publish was taken for a batch message, which
// the dead-letter stream refuses (10174), so a poison event that came in a
// batch was retried for ever. Its redrive must not be a batch message
// either.
func TestGroupCommittedEventsAreDeadLetteredAndRedriven(t *testing.T) {
	ctx := context.Background()
	f := newConsumerFixture(t, events.ConsumerConfig{AckWait: 2 * time.Second, MaxDeliver: 1})
	_, err := events.EnsureDLQStream(ctx, f.js, events.StreamConfig{})
	require.NoError(t, err)
	g, err := events.NewGroupCommitter(f.js, events.StreamName, events.GroupConfig{MinBatch: 2, InFlight: 1})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("ev-%d", i))
	}
	stream, err := f.js.Stream(ctx, events.StreamName)
	require.NoError(t, err)
	require.Zero(t, verifyAttack(t, stream, nil, hammer(g, ids, 10*time.Second)))
	batches, _, _ := g.Stats()
	require.Positive(t, batches, "the events were stored in batches")

	f.startWorker(t, "w", func(context.Context, events.Event) error {
		return fmt.Errorf("poison: %w", domain.ErrInvalid)
	})
	dlq, err := f.js.Stream(ctx, events.DLQStreamName)
	require.NoError(t, err)
	testutil.WaitFor(t, 30*time.Second, "every event to be dead-lettered", func() bool {
		info, err := dlq.Info(ctx)
		return err == nil && info.State.Msgs == uint64(len(ids))
	})

	// Redriving one sends an ordinary publish.
	raw, err := dlq.GetMsg(ctx, 1)
	require.NoError(t, err)
	for k := range raw.Header {
		require.False(t, events.IsBatchHeader(k), "dead letter carries %s", k)
	}
	msg := events.RedriveMsg(events.DecodeDeadLetter(raw.Subject, raw.Sequence, raw.Header, raw.Data))
	_, err = f.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamName))
	require.NoError(t, err)
}
