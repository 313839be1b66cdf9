package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Headers of JetStream's atomic batch publish (nats-server 2.12+).
const (
	headerBatchID     = "Nats-Batch-Id"
	headerBatchSeq    = "Nats-Batch-Sequence"
	headerBatchCommit = "Nats-Batch-Commit"
)

// IsBatchHeader reports whether k is one of the atomic batch headers. The
// server keeps them on the messages a batch stored, so whoever publishes a
// stored event's headers again (a dead letter, a redrive) must drop them:
// otherwise that publish is taken for part of a batch.
func IsBatchHeader(k string) bool { return strings.HasPrefix(k, "Nats-Batch-") }

// errCodeAtomicDisabled is JetStream's "atomic publish is disabled" (10174):
// the stream was created without allow_atomic.
const errCodeAtomicDisabled = 10174

// Defaults for GroupConfig.
const (
	DefaultGroupMinBatch = 8
	DefaultGroupMaxBatch = 256
	DefaultGroupInFlight = 1
	DefaultGroupLinger   = time.Millisecond
)

// GroupConfig configures a GroupCommitter.
type GroupConfig struct {
	// MinBatch is the fewest waiting messages sent as one atomic batch;
	// fewer are published one by one, concurrently. An atomic batch has a
	// fixed cost on the server (a staging store on disk for a file-backed
	// single-replica stream) that only many messages repay.
	MinBatch int
	// MaxBatch caps one batch; the server refuses more than 1,000.
	MaxBatch int
	// InFlight is how many batches (or groups of single publishes) are
	// outstanding at once. One makes the largest batches: everything that
	// arrives while a batch commits is the next batch, and a file store
	// commits batches one at a time anyway (measured best on 2 cores).
	InFlight int
	// Linger is how long a group may wait for the callers of the batch
	// just committed to publish again: after a batch of n messages, the
	// next group, when its first message came within Linger of that
	// commit, waits up to Linger for n more than had queued meanwhile.
	// Under steady load they come back within moments, and a batch's
	// fixed cost is shared by every publisher in flight instead of by
	// the half that queued while the other half was stored. After single
	// publishes or a pause (light load) a group never waits. Negative:
	// never wait.
	Linger time.Duration
	// Logger gets a line when batches are refused and the committer falls
	// back to single publishes.
	Logger zerolog.Logger
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c GroupConfig) WithDefaults() GroupConfig {
	if c.MinBatch == 0 {
		c.MinBatch = DefaultGroupMinBatch
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultGroupMaxBatch
	}
	if c.InFlight == 0 {
		c.InFlight = DefaultGroupInFlight
	}
	if c.Linger == 0 {
		c.Linger = DefaultGroupLinger
	}
	return c
}

// Validate reports the first invalid field by name.
func (c GroupConfig) Validate() error {
	switch {
	case c.MinBatch < 2:
		return fmt.Errorf("MinBatch must be at least 2, got %d", c.MinBatch)
	case c.MaxBatch < c.MinBatch || c.MaxBatch > 1000:
		return fmt.Errorf("MaxBatch must be between MinBatch and 1000, got %d", c.MaxBatch)
	case c.InFlight < 1:
		return fmt.Errorf("InFlight must be at least 1, got %d", c.InFlight)
	case c.Linger > maxGroupLinger:
		return fmt.Errorf("Linger must be at most %s, got %s", maxGroupLinger, c.Linger)
	}
	return nil
}

// GroupCommitter publishes messages to one stream so that many concurrent
// publishes share one disk sync: the messages waiting while earlier ones
// are being stored go to JetStream as one atomic batch, which a
// single-replica file store commits with one fsync (and a replicated
// stream with one consensus round). Each Publish still returns only after
// the server has acknowledged its message as stored, so a caller's
// guarantee is that of a synchronous publish.
//
// A batch fails whole when one of its message ids was already seen
// (JetStream error 10201), and whenever it fails for any reason its
// messages are published again one by one, whose deduplication by message
// id tells each caller whether its message was new or a duplicate. A
// stream created without allow_atomic refuses batches; the committer then
// publishes one by one for good.
type GroupCommitter struct {
	js     jetstream.JetStream
	stream string
	cfg    GroupConfig
	queue  chan *groupReq
	// atomicOff is set once the stream refused atomic batches.
	atomicOff atomic.Bool
	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
	mu        sync.RWMutex
	closed    bool

	// idPrefix and nextID name batches: unique among this committer's,
	// and random so that two ingest processes never share one.
	idPrefix string
	nextID   atomic.Uint64

	batches, batched, fallbacks atomic.Int64
	// lingers counts the groups that waited for more (linger).
	lingers atomic.Int64
}

type groupReq struct {
	ctx  context.Context
	msg  *nats.Msg
	ack  *jetstream.PubAck
	err  error
	done chan struct{}
}

// NewGroupCommitter starts a committer publishing to stream through js;
// Close stops it. Every message must carry a Nats-Msg-Id.
func NewGroupCommitter(js jetstream.JetStream, stream string, cfg GroupConfig) (*GroupCommitter, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("group commit config: %w", err)
	}
	var prefix [8]byte
	_, _ = rand.Read(prefix[:]) // never fails (crypto/rand)
	g := &GroupCommitter{js: js, stream: stream, cfg: cfg, queue: make(chan *groupReq, 4*cfg.MaxBatch), stop: make(chan struct{}), idPrefix: hex.EncodeToString(prefix[:])}
	for range cfg.InFlight {
		g.done.Go(g.loop)
	}
	return g, nil
}

// ErrCommitterClosed is returned by Publish after Close.
var ErrCommitterClosed = errors.New("group committer closed")

// Publish stores msg and returns JetStream's acknowledgement, as
// PublishDeduplicated does (ack.Duplicate is true when the stream already
// held msg's id). On an error, msg may or may not have been stored, as for
// any publish whose answer was lost; publishing it again is safe. msg
// itself is never changed: the committer works on a copy, which it may
// still be publishing after an error.
func (g *GroupCommitter) Publish(ctx context.Context, msg *nats.Msg) (*jetstream.PubAck, error) {
	own := &nats.Msg{Subject: msg.Subject, Data: msg.Data, Header: make(nats.Header, len(msg.Header)+4)}
	for k, v := range msg.Header {
		own.Header[k] = v
	}
	r := &groupReq{ctx: ctx, msg: own, done: make(chan struct{})}
	// Held while enqueueing so that Close, which takes it exclusively,
	// answers everything enqueued before it.
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		return nil, ErrCommitterClosed
	}
	select {
	case g.queue <- r:
	case <-ctx.Done():
		g.mu.RUnlock()
		return nil, ctx.Err()
	}
	g.mu.RUnlock()
	select {
	case <-r.done:
		return r.ack, r.err
	case <-ctx.Done():
		// The committer still publishes it; the caller's answer is "not
		// known", which a provider's retry resolves by deduplication.
		return nil, ctx.Err()
	}
}

// Close stops the committer after the messages already taken are
// answered; later Publish calls fail with ErrCommitterClosed.
func (g *GroupCommitter) Close() {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		close(g.stop)
	})
	g.done.Wait()
	// Answer what is still queued, so no caller waits for ever.
	for {
		select {
		case r := <-g.queue:
			r.err = ErrCommitterClosed
			close(r.done)
		default:
			return
		}
	}
}

// Stats reports how many atomic batches committed, how many messages they
// carried, and how many batches fell back to single publishes.
func (g *GroupCommitter) Stats() (batches, messages, fallbacks int64) {
	return g.batches.Load(), g.batched.Load(), g.fallbacks.Load()
}

func (g *GroupCommitter) loop() {
	group := make([]*groupReq, 0, g.cfg.MaxBatch)
	// last is the size of the batch this loop committed last, at
	// committed; 0 after single publishes.
	last := 0
	var committed time.Time
	for {
		group = group[:0]
		select {
		case r := <-g.queue:
			group = append(group, r)
		case <-g.stop:
			return
		}
		// Take what is waiting now: whatever arrived while the last
		// group was stored.
		group = g.take(group, g.cfg.MaxBatch)
		// Under load the callers of the batch just committed publish
		// again within moments: wait a little for them, so that the fixed
		// cost of a batch is shared by everyone in flight instead of by
		// the half that queued while the other half was being stored. A
		// first message that came later than that follows a pause: its
		// group goes at once.
		if last >= g.cfg.MinBatch && time.Since(committed) <= g.cfg.Linger {
			group = g.linger(group, min(len(group)+last, g.cfg.MaxBatch))
		}
		if len(group) < g.cfg.MinBatch || g.atomicOff.Load() {
			g.singles(group)
			last = 0
			continue
		}
		if err := g.commit(group); err != nil {
			g.fallbacks.Add(1)
			g.cfg.Logger.Debug().Err(err).Int("messages", len(group)).Msg("atomic batch refused; publishing its messages one by one")
			g.singles(group)
			last = 0
			continue
		}
		last, committed = len(group), time.Now()
	}
}

// take adds to group what is waiting in the queue, without waiting, up to
// max messages in all.
func (g *GroupCommitter) take(group []*groupReq, max int) []*groupReq {
	for len(group) < max {
		select {
		case r := <-g.queue:
			group = append(group, r)
		default:
			return group
		}
	}
	return group
}

// linger adds to group what arrives within Linger, up to max messages in
// all; Close ends the wait early (the group is still answered).
func (g *GroupCommitter) linger(group []*groupReq, max int) []*groupReq {
	if g.cfg.Linger <= 0 {
		return group
	}
	g.lingers.Add(1)
	t := time.NewTimer(g.cfg.Linger)
	defer t.Stop()
	for len(group) < max {
		select {
		case r := <-g.queue:
			group = append(group, r)
		case <-t.C:
			return group
		case <-g.stop:
			return group
		}
	}
	return group
}

// singles publishes each request on its own, concurrently, and answers it.
func (g *GroupCommitter) singles(group []*groupReq) {
	var wg sync.WaitGroup
	for _, r := range group {
		wg.Go(func() {
			r.ack, r.err = PublishDeduplicated(r.ctx, g.js, r.msg, g.stream)
			close(r.done)
		})
	}
	wg.Wait()
}

// batchAck is the commit's answer: a PubAck with the batch's id and size,
// or an API error.
type batchAck struct {
	jetstream.PubAck
	BatchID string              `json:"batch"`
	Count   int                 `json:"count"`
	Error   *jetstream.APIError `json:"error"`
}

// commit publishes group as one atomic batch and, when the server
// committed it, answers every request. On an error nothing is answered.
func (g *GroupCommitter) commit(group []*groupReq) error {
	// Two copies of one event in a batch would fail it (10201): the later
	// copies are answered as duplicates once the first is stored.
	seen := make(map[string]*groupReq, len(group))
	var send []*groupReq
	var dups []*groupReq
	for _, r := range group {
		id := r.msg.Header.Get(jetstream.MsgIDHeader)
		if _, ok := seen[id]; ok {
			dups = append(dups, r)
			continue
		}
		seen[id] = r
		send = append(send, r)
	}
	// The batch is bounded by the latest of its callers' deadlines: a
	// caller that gave up does not cut it short for those still waiting.
	ctx, cancel := context.WithTimeout(context.Background(), defaultCommitTimeout)
	if dl, ok := latestDeadline(send); ok {
		cancel()
		ctx, cancel = context.WithDeadline(context.Background(), dl)
	}
	defer cancel()
	nc := g.js.Conn()
	id := g.idPrefix + "-" + strconv.FormatUint(g.nextID.Add(1), 10)
	var resp *nats.Msg
	// The batch headers go on the committer's copies of the messages; a
	// batch that fails takes them off again (unbatch) before its messages
	// are published one by one.
	for i, r := range send {
		m := r.msg
		m.Header.Set(headerBatchID, id)
		m.Header.Set(headerBatchSeq, strconv.Itoa(i+1))
		m.Header.Set(jetstream.ExpectedStreamHeader, g.stream)
		if i < len(send)-1 {
			if err := nc.PublishMsg(m); err != nil {
				unbatch(send)
				return fmt.Errorf("batch %s message %d: %w", id, i+1, err)
			}
			continue
		}
		m.Header.Set(headerBatchCommit, "1")
		var err error
		resp, err = nc.RequestMsgWithContext(ctx, m)
		unbatch(send)
		if err != nil {
			return fmt.Errorf("commit batch %s: %w", id, err)
		}
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("commit batch %s: unreadable answer: %w", id, err)
	}
	if ack.Error != nil {
		if ack.Error.ErrorCode == errCodeAtomicDisabled && !g.atomicOff.Swap(true) {
			g.cfg.Logger.Warn().Str("stream", g.stream).Msg("the stream refuses atomic batches (created without allow_atomic): every event is published and synced on its own (deploy/nats/README.md, upgrading)")
		}
		return fmt.Errorf("commit batch %s: %w", id, ack.Error)
	}
	if ack.Count != len(send) || ack.BatchID != id {
		return fmt.Errorf("commit batch %s: the server committed batch %q of %d messages, not %d", id, ack.BatchID, ack.Count, len(send))
	}
	g.batches.Add(1)
	g.batched.Add(int64(len(send)))
	first := ack.Sequence - uint64(len(send)) + 1
	for i, r := range send {
		r.ack = &jetstream.PubAck{Stream: ack.Stream, Sequence: first + uint64(i), Domain: ack.Domain}
		close(r.done)
	}
	for _, r := range dups {
		orig := seen[r.msg.Header.Get(jetstream.MsgIDHeader)]
		r.ack = &jetstream.PubAck{Stream: ack.Stream, Sequence: orig.ack.Sequence, Domain: ack.Domain, Duplicate: true}
		close(r.done)
	}
	return nil
}

// unbatch removes the batch headers commit put on the messages.
func unbatch(rs []*groupReq) {
	for _, r := range rs {
		r.msg.Header.Del(headerBatchID)
		r.msg.Header.Del(headerBatchSeq)
		r.msg.Header.Del(headerBatchCommit)
	}
}

// defaultCommitTimeout bounds a batch whose callers set no deadline.
const defaultCommitTimeout = 5 * time.Second

// maxGroupLinger bounds GroupConfig.Linger: a wait that long would be
// felt by every caller of every batch under load.
const maxGroupLinger = 50 * time.Millisecond

// latestDeadline is the latest deadline among the requests' contexts;
// false when one of them has none.
func latestDeadline(rs []*groupReq) (time.Time, bool) {
	var latest time.Time
	for _, r := range rs {
		dl, ok := r.ctx.Deadline()
		if !ok {
			return time.Time{}, false
		}
		if dl.After(latest) {
			latest = dl
		}
	}
	return latest, true
}
