package allocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// CoboAPI is the part of Cobo's API the batcher uses, with the error
// contracts of cobo.Client.
type CoboAPI interface {
	// CreateBatchAllocation creates the batch or, when Cobo answers a code
	// that may mean its request_id was used before and a batch has it,
	// returns the existing one.
	CreateBatchAllocation(ctx context.Context, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error)
	// FindBatchAllocation looks a batch up by request_id; its error wraps
	// cobo.ErrBatchNotFound only when Cobo certainly has none.
	FindBatchAllocation(ctx context.Context, requestID string) (cobo.BatchAllocation, error)
	GetBatchAllocation(ctx context.Context, batchAllocationID string) (cobo.BatchAllocation, error)
}

// Defaults for BatcherConfig.
const (
	DefaultBatchMax     = 50
	DefaultBatchWait    = 2 * time.Second
	DefaultRecoverEvery = 5 * time.Second
	DefaultRecoverAfter = 30 * time.Second
	// DefaultIntentAck is the ack wait of the intent consumers: how long
	// an intent held by a process that died waits before another takes
	// it. The batcher and the BitGo sender mark the intents they hold in
	// progress every third of it, so it bounds no send.
	DefaultIntentAck   = 5 * time.Second
	DefaultRetryMax    = 5 * time.Minute
	DefaultSettleAfter = 2 * time.Minute
	DefaultStuckAfter  = 30 * time.Minute
)

// BatcherConfig configures a Batcher.
type BatcherConfig struct {
	// BatchMax is the most items in one Cobo batch (Cobo's list limit is 50).
	BatchMax int
	// BatchWait is how long the first item of a batch waits for company.
	BatchWait time.Duration
	// RecoverEvery is how often unfinished batches are looked for. Between
	// two passes, the owners whose batches the last pass left to them are
	// checked every HeartbeatEvery, and a pass runs at once when one of
	// them is found dead.
	RecoverEvery time.Duration
	// HeartbeatEvery is how often the batcher rewrites its heartbeat in
	// OwnersBucket while it runs.
	HeartbeatEvery time.Duration
	// OwnerTimeout is how long the heartbeat of a batch's owner must have
	// been stale (or gone) before another batcher resumes the batch. A
	// batch whose owner's heartbeat is fresh is left to it, however old.
	// It must be at least three HeartbeatEvery.
	OwnerTimeout time.Duration
	// RecoverAfter is the fallback: how long a batch must have been left
	// untouched before a batcher resumes it when its owner's liveness is
	// unknown (no owner named: written by an earlier version, or while its
	// owner's heartbeats failed; or this batcher cannot read heartbeats),
	// and before the owner itself resumes a batch of its own. It is also
	// where the backoff of a batch that does not move on starts.
	RecoverAfter time.Duration
	// SendTimeout bounds one send of a batch, retries included.
	SendTimeout time.Duration
	// RetryMax caps the backoff between two tries of a batch that did not
	// move on: polls of items Cobo has not finished (which never stop),
	// sends waiting for credentials or an answer, lookups. The backoff
	// doubles from RecoverAfter.
	RetryMax time.Duration
	// SettleAfter is how long after a send Cobo may still be creating the
	// batch from it: a lookup that finds nothing within it proves nothing
	// when that send (or an earlier one) got no definite answer.
	SettleAfter time.Duration
	// StuckAfter is how long items may stay planned or pending in a batch
	// before they are marked stuck on their order (stuck_since), logged at
	// error level and counted in paystream_allocation_items_stuck.
	StuckAfter time.Duration
	// Retention is how long the claims of a retired batch, and the marker
	// of its removal, are kept (the workers' -retention):
	// events.DefaultRetention when zero.
	Retention time.Duration
	Logger    zerolog.Logger
	Metrics   *Metrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c BatcherConfig) WithDefaults() BatcherConfig {
	if c.BatchMax == 0 {
		c.BatchMax = DefaultBatchMax
	}
	if c.BatchWait == 0 {
		c.BatchWait = DefaultBatchWait
	}
	if c.RecoverEvery == 0 {
		c.RecoverEvery = DefaultRecoverEvery
	}
	if c.RecoverAfter == 0 {
		c.RecoverAfter = DefaultRecoverAfter
	}
	if c.HeartbeatEvery == 0 {
		c.HeartbeatEvery = DefaultHeartbeatEvery
	}
	if c.OwnerTimeout == 0 {
		c.OwnerTimeout = max(DefaultOwnerTimeout, 3*c.HeartbeatEvery)
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = time.Minute
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.SettleAfter == 0 {
		c.SettleAfter = DefaultSettleAfter
	}
	if c.StuckAfter == 0 {
		c.StuckAfter = DefaultStuckAfter
	}
	if c.Retention == 0 {
		c.Retention = events.DefaultRetention
	}
	return c
}

// Validate reports the first invalid field by name.
func (c BatcherConfig) Validate() error {
	switch {
	case c.BatchMax < 1 || c.BatchMax > 50:
		return fmt.Errorf("BatchMax must be 1 to 50, got %d", c.BatchMax)
	case c.BatchWait <= 0:
		return fmt.Errorf("BatchWait must be positive, got %s", c.BatchWait)
	case c.RecoverEvery <= 0 || c.RecoverAfter <= 0:
		return fmt.Errorf("RecoverEvery and RecoverAfter must be positive, got %s and %s", c.RecoverEvery, c.RecoverAfter)
	case c.SendTimeout <= 0:
		return fmt.Errorf("SendTimeout must be positive, got %s", c.SendTimeout)
	case validateHeartbeats(c.HeartbeatEvery, c.OwnerTimeout) != nil:
		return validateHeartbeats(c.HeartbeatEvery, c.OwnerTimeout)
	case c.RetryMax <= 0 || c.SettleAfter < 0 || c.StuckAfter <= 0:
		return fmt.Errorf("RetryMax and StuckAfter must be positive and SettleAfter not negative, got %s, %s and %s", c.RetryMax, c.StuckAfter, c.SettleAfter)
	case c.Retention < time.Second:
		return fmt.Errorf("Retention must be at least 1s, got %s", c.Retention)
	}
	return nil
}

// Batcher groups planned Cobo items into batch allocations and delivers
// each item exactly once: an item is claimed by one batch, the batch is
// persisted with its request_id before the first send, every resend uses
// that request_id, and the outcome is recorded on the orders. Any number
// of batchers may run. Each owns the batches it writes (Batch.Owner) while
// its heartbeat in OwnersBucket is fresh, and resumes the batches of
// owners whose heartbeat went stale (see Recover).
// What a batch sends is the orders' copies of planned items, never an
// intent's fields; intents naming anything else are rejected (see flush).
// An item is recorded failed only when Cobo certainly did not make it
// (see deliver).
type Batcher struct {
	js     jetstream.JetStream
	store  *batchStore
	api    CoboAPI
	orders OrderRepo
	cfg    BatcherConfig
	owners *owners

	// waitingOn holds the owners whose batches the last complete
	// recovery pass left to them (alive then); Run checks them between
	// passes. waitMu guards it.
	waitMu    sync.Mutex
	waitingOn map[string]bool

	// stuckMu guards stuck: items this batcher has marked stuck on their
	// orders, so each is written once per process.
	stuckMu sync.Mutex
	stuck   map[string]bool
}

// NewBatcher returns a Batcher. EnsureResources must have run.
func NewBatcher(ctx context.Context, js jetstream.JetStream, api CoboAPI, orders OrderRepo, cfg BatcherConfig) (*Batcher, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	st, err := openBatchStore(ctx, js, events.Retention{Keep: cfg.Retention}, cfg.Logger)
	if err != nil {
		return nil, err
	}
	own := openOwners(ctx, js, "batcher", cfg.HeartbeatEvery, cfg.OwnerTimeout, cfg.Logger)
	st.owner = own.owner
	return &Batcher{js: js, store: st, api: api, orders: orders, cfg: cfg, owners: own, stuck: map[string]bool{}}, nil
}

// Run batches until ctx is done. While it runs, the batcher's heartbeat
// in OwnersBucket is rewritten every HeartbeatEvery; when it returns the
// heartbeat is removed, so that a batch it was sending when ctx ended
// (left persisted) is resumed by another batcher at once. A batcher that
// dies without removing it has its batches resumed once its heartbeat is
// OwnerTimeout stale. The intents it holds are marked in progress until
// they are acked or handed back. A failed lookup of the shared consumer
// is retried every second; Run returns its error only when lookups have
// failed for a minute.
func (b *Batcher) Run(ctx context.Context) error {
	// The heartbeat is written before anything is owned, and removed only
	// once nothing is sent any more (deliver runs on this goroutine), so
	// that a batcher seen gone has nothing in flight; hence a context of
	// its own, ended by Run's return rather than by ctx.
	b.owners.beat(ctx)
	hctx, stopBeats := context.WithCancel(context.WithoutCancel(ctx))
	beating := make(chan struct{})
	go func() { b.owners.run(hctx); close(beating) }()
	defer func() { stopBeats(); <-beating }()

	// One failed lookup (a leader election, a reconnect) must not end
	// batching for good while the rest of the worker runs on.
	var cons jetstream.Consumer
	for giveUp := time.Now().Add(time.Minute); ; {
		var err error
		if cons, err = b.js.Consumer(ctx, IntentStream, BatcherConsumer); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("batcher consumer: %w", err)
		}
		b.cfg.Logger.Warn().Err(err).Msg("batcher consumer lookup failed; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	markEvery := events.InProgressEvery(intentAckWait(cons))
	it, err := cons.Messages(jetstream.PullMaxMessages(4*b.cfg.BatchMax), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("batcher consume: %w", err)
	}
	defer it.Stop()

	var pending []jetstream.Msg
	// Whichever way Run ends, what it holds is handed back, which also
	// ends the in-progress marks.
	defer func() {
		for _, m := range pending {
			_ = m.Nak()
		}
	}()
	var firstAt time.Time
	nextRecover, nextCheck := time.Now(), time.Now()
	for ctx.Err() == nil {
		due := time.Now().After(nextRecover)
		if !due && time.Now().After(nextCheck) {
			// A batch whose owner just died need not wait for the next
			// pass: the owners the last pass left batches to are few.
			nextCheck = time.Now().Add(b.cfg.HeartbeatEvery)
			due = b.ownerDied(ctx)
		}
		if due {
			b.Recover(ctx, b.cfg.RecoverAfter)
			nextRecover = time.Now().Add(b.cfg.RecoverEvery)
		}
		wait := 250 * time.Millisecond
		if len(pending) > 0 {
			wait = max(time.Millisecond, min(wait, time.Until(firstAt.Add(b.cfg.BatchWait))))
		}
		msg, err := it.Next(jetstream.NextMaxWait(wait))
		switch {
		case err == nil:
			if len(pending) == 0 {
				firstAt = time.Now()
			}
			pending = append(pending, holdIntent(msg, markEvery))
		case errors.Is(err, nats.ErrTimeout):
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return nil
		default:
			b.cfg.Logger.Warn().Err(err).Msg("batcher pull interrupted")
		}
		if len(pending) > 0 && (len(pending) >= b.cfg.BatchMax || time.Since(firstAt) >= b.cfg.BatchWait) {
			b.flush(ctx, pending)
			pending = nil
		}
	}
	return nil
}

// flush verifies intents against their orders, turns the sendable ones
// into one persisted, claimed batch, acks them, and sends the batch.
//
// An intent only names an item: the batch holds the order's copy of it
// (see senders.go), loaded with one Get per distinct order. For the
// batcher an intent whose item matches its order is
//
//   - sendable when the item is planned on the order. It joins this batch
//     unless its claim in paystream_alloc_claims belongs to another batch
//     (settleClaims): that batch, persisted and not yet recorded, is the
//     only one that sends the item, and Recover resumes it;
//   - stale when the item is pending, completed or failed on the order: a
//     batch recorded it as sent (the item carries that batch's
//     request_id), and that batch polls it until it is final.
//
// An order that does not exist rejects its intents; one that cannot be
// read hands them back, as a batch that cannot be persisted does.
func (b *Batcher) flush(ctx context.Context, msgs []jetstream.Msg) {
	log := b.cfg.Logger
	type intent struct {
		msg jetstream.Msg
		it  domain.AllocationItem
	}
	intents := make([]intent, 0, len(msgs))
	for _, m := range msgs {
		var it domain.AllocationItem
		if err := json.Unmarshal(m.Data(), &it); err != nil || it.ID == "" {
			detail := "no item id"
			if err != nil {
				detail = err.Error()
			}
			rejectIntent(log, b.metrics(), domain.BackendCobo, m.Subject(), it, &rejection{RejectUndecodable, clip(detail)})
			_ = m.Term()
			continue
		}
		if rej := checkSubject(domain.BackendCobo, m.Subject(), it); rej != nil {
			rejectIntent(log, b.metrics(), domain.BackendCobo, m.Subject(), it, rej)
			_ = m.Ack()
			continue
		}
		intents = append(intents, intent{m, it})
	}

	orders := map[string]*domain.Order{} // nil: no such order
	unreadable := map[string]bool{}
	for _, in := range intents {
		id := in.it.OrderID
		if _, ok := orders[id]; ok || unreadable[id] {
			continue
		}
		o, _, err := b.orders.Get(ctx, id)
		switch {
		case err == nil, errors.Is(err, domain.ErrNotFound):
			orders[id] = o
		default:
			unreadable[id] = true
			log.Warn().Err(err).Str("order_id", id).Msg("order of allocation intents not readable; its intents handed back")
		}
	}

	var batchMsgs []jetstream.Msg
	var items []domain.AllocationItem
	seen := map[string]bool{}
	for _, in := range intents {
		if unreadable[in.it.OrderID] {
			_ = in.msg.NakWithDelay(time.Second)
			continue
		}
		cur, rej := matchOrder(in.it, orders[in.it.OrderID])
		if rej != nil {
			rejectIntent(log, b.metrics(), domain.BackendCobo, in.msg.Subject(), in.it, rej)
			_ = in.msg.Ack()
			continue
		}
		if cur.Status != domain.AllocPlanned {
			staleIntent(log, cur, cur.Status, "a batch already recorded the item")
			_ = in.msg.Ack()
			continue
		}
		batchMsgs = append(batchMsgs, in.msg)
		if !seen[cur.ID] {
			seen[cur.ID] = true
			items = append(items, cur)
		}
	}
	if len(items) == 0 {
		return
	}
	now := time.Now().UTC()
	batch := &Batch{RequestID: newRequestID(), Status: BatchClaiming, Items: items, ItemsSince: now, CreatedAt: now}
	rev, err := b.store.put(ctx, batch, 0)
	if err == nil {
		rev, err = b.settleClaims(ctx, batch, rev)
	}
	if err != nil {
		// Nothing was sent: hand the intents back. A half-claimed batch is
		// finished by Recover, and the redelivered intents find their claims.
		log.Warn().Err(err).Str("request_id", batch.RequestID).Msg("batch not persisted; intents handed back")
		for _, m := range batchMsgs {
			_ = m.NakWithDelay(time.Second)
		}
		return
	}
	for _, m := range batchMsgs {
		_ = m.Ack()
	}
	if batch.Status == BatchReady {
		b.deliver(ctx, batch, rev)
	}
}

// settleClaims claims every item for the batch, drops items another batch
// owns, and moves the batch to ready (or deletes it when nothing is left).
// Claims decide batch membership: a batch resumed by Recover keeps exactly
// the items whose claim is its own request_id, whatever their intents. A
// half of a split batch takes over its items' claims from the parent.
func (b *Batcher) settleClaims(ctx context.Context, batch *Batch, rev uint64) (uint64, error) {
	kept := batch.Items[:0:0]
	for _, it := range batch.Items {
		owned, err := b.store.claim(ctx, it.ID, batch.RequestID, batch.Parent)
		if err != nil {
			return rev, err
		}
		if !owned {
			// In flight in another batch, which alone sends it: an intent
			// redelivered after a crash between claim and ack.
			b.cfg.Logger.Debug().Str("order_id", it.OrderID).Str("item_id", it.ID).Str("request_id", batch.RequestID).
				Msg("item claimed by another batch; left to it")
			continue
		}
		it.RequestID = batch.RequestID
		kept = append(kept, it)
	}
	batch.Items = kept
	if len(kept) == 0 {
		return 0, b.store.remove(ctx, batch.RequestID)
	}
	batch.Status = BatchReady
	return b.store.put(ctx, batch, rev)
}

// Recover resumes every due batch (NextAt passed) that is
//
//   - owned by an owner whose heartbeat is gone or OwnerTimeout stale: at
//     once, whatever its age;
//   - this batcher's own, or of unknown owner (none named, or heartbeats
//     unreadable from here): once last touched more than olderThan ago.
//
// A batch whose owner's heartbeat is fresh is left to that owner, however
// old. Resuming finishes claims, resends ready batches with their
// request_id, looks up and splits refused ones, polls sent ones and
// records outcomes; its first write names this batcher the owner.
//
// Resuming is safe even when the owner was wrongly taken for dead (a
// pause longer than OwnerTimeout): every write of a batch is a
// compare-and-set on its revision, so of two batchers only one notes a
// send and makes it; a batch persisted mid-send (InFlight) is resent only
// with its one request_id, which Cobo refuses to create twice, and a
// refusal is looked up (MayExist); and items join a batch only through
// their claims. Those are the guards, as they were when recovery went by
// age alone; the heartbeats only spare a live owner's batches.
//
// On the way it marks stuck items (StuckAfter) on their orders and, after
// a scan of every batch, sets the stuck-item and waiting-batch gauges. It
// returns how many batches it resumed.
func (b *Batcher) Recover(ctx context.Context, olderThan time.Duration) int {
	keys, err := b.store.keys(ctx)
	if err != nil {
		if !errors.Is(err, jetstream.ErrNoKeysFound) {
			b.cfg.Logger.Warn().Err(err).Msg("cannot list batches to recover")
			return 0
		}
		keys = nil
	}
	n, complete := 0, true
	stuck, waiting, open := map[string]bool{}, map[string]int{}, map[string]bool{}
	live := b.owners.view(ctx)
	waitingOn := map[string]bool{}
	for _, k := range keys {
		if ctx.Err() != nil {
			complete = false
			break
		}
		batch, rev, err := b.store.get(ctx, k)
		if err != nil {
			// A batch retired since the listing is simply gone.
			complete = complete && errors.Is(err, domain.ErrNotFound)
			continue
		}
		now := time.Now()
		if batch.Waiting != "" {
			waiting[batch.Waiting]++
		}
		items := openItems(batch)
		for _, it := range items {
			open[it.ID] = true
		}
		if len(items) > 0 && now.Sub(batch.itemsSince()) >= b.cfg.StuckAfter {
			// By id: a split batch and its halves share items for a moment.
			for _, it := range items {
				stuck[it.ID] = true
			}
			b.markStuck(ctx, batch, items)
		}
		if now.Before(batch.NextAt) {
			continue
		}
		state := live.state(ctx, batch.Owner)
		switch state {
		case ownerAlive:
			// Its owner drives it, and resumes it when due: taking it
			// over would only race a live batcher.
			waitingOn[batch.Owner] = true
			continue
		case ownerDead:
			// Its owner is gone: at once, however recently it wrote.
		default:
			if now.Sub(batch.UpdatedAt) < olderThan {
				continue
			}
		}
		n++
		b.cfg.Logger.Info().Str("request_id", batch.RequestID).Str("status", batch.Status).Int("attempts", batch.Attempts).
			Str("owner", batch.Owner).Bool("owner_gone", state == ownerDead).Msg("resuming batch")
		if batch.Status == BatchClaiming {
			if rev, err = b.settleClaims(ctx, batch, rev); err != nil || batch.Status != BatchReady {
				continue
			}
		}
		b.deliver(ctx, batch, rev)
	}
	if complete {
		b.waitMu.Lock()
		b.waitingOn = waitingOn
		b.waitMu.Unlock()
		b.metrics().cobo.itemsStuck.Set(float64(len(stuck)))
		for _, r := range waitReasons {
			b.metrics().cobo.batchesWaiting.WithLabelValues(r).Set(float64(waiting[r]))
		}
		b.forgetStuck(open)
	}
	return n
}

// ownerDied reports whether an owner the last recovery pass left batches
// to has died since.
func (b *Batcher) ownerDied(ctx context.Context) bool {
	b.waitMu.Lock()
	owners := make([]string, 0, len(b.waitingOn))
	for o := range b.waitingOn {
		owners = append(owners, o)
	}
	b.waitMu.Unlock()
	if len(owners) == 0 {
		return false
	}
	live := b.owners.view(ctx)
	for _, o := range owners {
		if live.state(ctx, o) == ownerDead {
			return true
		}
	}
	return false
}

// intentAckWait is the ack wait of an intent consumer as last read, the
// default when unknown.
func intentAckWait(cons jetstream.Consumer) time.Duration {
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		return info.Config.AckWait
	}
	return DefaultIntentAck
}

// heldIntent is an intent a sender holds: it is marked in progress until
// it is answered (acked, handed back or terminated), so that a short ack
// wait does not give it to another sender meanwhile.
type heldIntent struct {
	jetstream.Msg
	stop func()
}

func holdIntent(msg jetstream.Msg, every time.Duration) heldIntent {
	return heldIntent{Msg: msg, stop: events.KeepInProgress(msg, every, time.Time{})}
}

// Ack stops the marks, then acks.
func (h heldIntent) Ack() error { h.stop(); return h.Msg.Ack() }

// Nak stops the marks, then hands the intent back.
func (h heldIntent) Nak() error { h.stop(); return h.Msg.Nak() }

// NakWithDelay stops the marks (one after it would replace its delay),
// then hands the intent back after delay.
func (h heldIntent) NakWithDelay(delay time.Duration) error {
	h.stop()
	return h.Msg.NakWithDelay(delay)
}

// Term stops the marks, then terminates the intent.
func (h heldIntent) Term() error { h.stop(); return h.Msg.Term() }

func toRequest(batch *Batch) cobo.CreateBatchAllocationRequest {
	req := cobo.CreateBatchAllocationRequest{RequestID: batch.RequestID}
	for _, it := range batch.Items {
		req.AllocationParams = append(req.AllocationParams, cobo.AllocationParam{
			TokenID: it.TokenID,
			// Exact: splits are already rounded down, late payments move
			// exactly what was received.
			Amount:             it.Amount.String(),
			SourceAccount:      it.Source,
			DestinationAccount: it.Destination,
			Description:        it.Description,
		})
	}
	return req
}

// newRequestID returns a random UUIDv4-shaped request id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return uuidString(b, 4)
}

// uuidString formats b as an RFC 9562 UUID of the given version.
func uuidString(b [16]byte, version byte) string {
	b[6] = b[6]&0x0f | version<<4
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func (b *Batcher) metrics() *Metrics {
	if b.cfg.Metrics == nil {
		return nopMetrics
	}
	return b.cfg.Metrics
}

// markStuck marks the batch's open items stuck on their orders
// (stuck_since: when they became stuck) and logs each at error level once,
// the first time any batcher marks it. An item already marked by this
// batcher is not read again.
func (b *Batcher) markStuck(ctx context.Context, batch *Batch, open []domain.AllocationItem) {
	since := batch.itemsSince().Add(b.cfg.StuckAfter).UTC()
	byOrder := map[string]map[string]bool{}
	b.stuckMu.Lock()
	for _, it := range open {
		if b.stuck[it.ID] {
			continue
		}
		if byOrder[it.OrderID] == nil {
			byOrder[it.OrderID] = map[string]bool{}
		}
		byOrder[it.OrderID][it.ID] = true
	}
	b.stuckMu.Unlock()
	for orderID, ids := range byOrder {
		changed, err := updateItems(ctx, b.orders, orderID, func(cur *domain.AllocationItem) bool {
			if !ids[cur.ID] || cur.StuckSince != nil {
				return false
			}
			t := since
			cur.StuckSince = &t
			return true
		})
		if err != nil {
			b.cfg.Logger.Warn().Err(err).Str("order_id", orderID).Str("request_id", batch.RequestID).Msg("could not mark stuck items on their order; will try again")
			continue
		}
		b.stuckMu.Lock()
		for id := range ids {
			b.stuck[id] = true
		}
		b.stuckMu.Unlock()
		for _, it := range changed {
			b.cfg.Logger.Error().Str("order_id", orderID).Str("item_id", it.ID).Str("status", it.Status).
				Str("request_id", batch.RequestID).Str("batch_status", batch.Status).Str("batch_allocation_id", batch.BatchAllocationID).
				Str("provider_status", batch.ProviderStatus).Str("waiting", batch.Waiting).Str("last_error", batch.LastError).
				Time("stuck_since", since).Dur("stuck_after", b.cfg.StuckAfter).
				Msg("allocation item stuck: not final long after it entered a batch; it is still being sent or polled, reconcile it with Cobo (GET /payments/batch_allocations?request_id=)")
		}
	}
}

// forgetStuck keeps in the set of items marked stuck only those still
// open in some batch, so the set does not grow for ever.
func (b *Batcher) forgetStuck(open map[string]bool) {
	b.stuckMu.Lock()
	defer b.stuckMu.Unlock()
	for id := range b.stuck {
		if !open[id] {
			delete(b.stuck, id)
		}
	}
}

// backoff is the wait before the next try of a batch tried retries times
// without moving on: RecoverAfter doubling, capped at RetryMax.
func (b *Batcher) backoff(retries int) time.Duration {
	return backoff.Policy{Base: b.cfg.RecoverAfter, Max: b.cfg.RetryMax}.Delay(retries)
}

// Batch statuses. A batch goes claiming, ready, then sent; a refusal from
// Cobo takes it through checking (when Cobo may hold it all the same) to
// rejected (one item) or splitting (several).
const (
	// BatchClaiming: created; its items are being claimed.
	BatchClaiming = "claiming"
	// BatchReady: items frozen; it may be sent, always with RequestID.
	BatchReady = "ready"
	// BatchChecking: Cobo refused a send, but an earlier send of the same
	// request_id may have created the batch, or the refusal's code may
	// mean "request_id already used". It is looked up by request_id, never
	// sent again, until it is found (sent) or certainly absent (rejected
	// or splitting).
	BatchChecking = "checking"
	// BatchSent: Cobo created it; outcomes are being recorded.
	BatchSent = "sent"
	// BatchRejected: Cobo certainly did not create it and it holds one
	// item, which is recorded failed with Cobo's answer.
	BatchRejected = "rejected"
	// BatchSplitting: Cobo certainly did not create it and it holds
	// several items. They move to the two batches named in Children (the
	// first and second half), each with its own request_id, so that one
	// item Cobo refuses does not sink the others.
	BatchSplitting = "splitting"
)

// Why a batch waits (Batch.Waiting), the reason label of
// paystream_allocation_batches_waiting.
const (
	// WaitCredentials: Cobo refused paystream's credentials (401, 403, a
	// signature, nonce or key error code). The items wait; the batch is
	// sent again with its request_id until the credentials work.
	WaitCredentials = "credentials"
	// WaitEndpoint: Cobo's answer says the request went to the wrong place
	// or in the wrong form (see cobo.APIError.EndpointProblem).
	WaitEndpoint = "endpoint"
	// WaitProvider: no definite answer (5xx, 429, timeouts, lost answers,
	// failed lookups or polls).
	WaitProvider = "provider"
	// WaitSettling: a lookup found no batch, but an earlier send of the
	// request_id may still be in progress at Cobo; it is looked up again
	// once SettleAfter has passed since the last send.
	WaitSettling = "settling"
)

var waitReasons = []string{WaitCredentials, WaitEndpoint, WaitProvider, WaitSettling}

// Batch is a Cobo batch allocation as paystream persists it before the
// first send, so that every retry sends the same request_id.
type Batch struct {
	RequestID string `json:"request_id"`
	Status    string `json:"status"`
	// Owner is the owner id (OwnersBucket) of the batcher that last wrote
	// the batch, empty when its heartbeat was not healthy then (or it
	// predates owners). Other batchers leave the batch to a live owner.
	Owner             string                  `json:"owner,omitempty"`
	Items             []domain.AllocationItem `json:"items"`
	BatchAllocationID string                  `json:"batch_allocation_id,omitempty"`
	ProviderStatus    string                  `json:"provider_status,omitempty"`
	// Attempts counts the sends begun. It is persisted before each send,
	// so a batch resumed after a crash mid-send knows Cobo may hold it.
	Attempts int `json:"attempts"`
	// LastSendAt is when the latest send ended, answered or not.
	LastSendAt time.Time `json:"last_send_at,omitzero"`
	// InFlight is set, and persisted, before each send and cleared with
	// its answer: found set, the last send's fate is unknown.
	InFlight bool `json:"in_flight,omitempty"`
	// MayExist says an earlier send of this request_id got no definite
	// answer, or was begun and its answer never recorded: Cobo may hold
	// the batch, so a refusal proves nothing until a lookup settles it.
	MayExist bool `json:"may_exist,omitempty"`
	// Waiting says why the batch did not move on (Wait*); empty while it
	// moves or its items are simply not final at Cobo yet.
	Waiting string `json:"waiting,omitempty"`
	// Retries counts the tries since the batch last moved on (sends,
	// lookups, polls); NextAt, when set, is the earliest time any batcher
	// resumes it: backoff doubling from RecoverAfter to RetryMax.
	Retries int       `json:"retries,omitempty"`
	NextAt  time.Time `json:"next_at,omitzero"`
	// Rejection is Cobo's answer refusing the batch, kept while it is
	// checked and recorded as the reason of items it fails.
	Rejection string `json:"rejection,omitempty"`
	// Parent is the request_id of the batch this one was split from: the
	// items' claims move from it to this one. Children are the request_ids
	// of the halves of a splitting batch.
	Parent    string   `json:"parent,omitempty"`
	Children  []string `json:"children,omitempty"`
	LastError string   `json:"last_error,omitempty"`
	// ItemsSince is when the items first entered a batch (the first batch
	// of a split chain); stuck items are counted from it.
	ItemsSince time.Time `json:"items_since,omitzero"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// itemsSince is ItemsSince, or CreatedAt for batches persisted before it
// existed.
func (b *Batch) itemsSince() time.Time {
	if b.ItemsSince.IsZero() {
		return b.CreatedAt
	}
	return b.ItemsSince
}

// batchStore keeps batches and claims in their buckets. A batch never
// expires while it exists; removing it leaves a marker that expires after
// the retention. A claim never expires while its batch exists; when the
// batch is retired its claims are set to expire after the retention
// (retireClaims).
type batchStore struct {
	batches *events.ExpiringKV
	claims  *events.ExpiringKV
	// owner, when set, names the owner written on every batch put.
	owner func() string
}

func openBatchStore(ctx context.Context, js jetstream.JetStream, r events.Retention, log zerolog.Logger) (*batchStore, error) {
	b, err := js.KeyValue(ctx, BatchesBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", BatchesBucket, err)
	}
	c, err := js.KeyValue(ctx, ClaimsBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", ClaimsBucket, err)
	}
	st := &batchStore{}
	if st.batches, err = events.OpenExpiringKV(ctx, js, b, r, log); err != nil {
		return nil, err
	}
	if st.claims, err = events.OpenExpiringKV(ctx, js, c, r, log); err != nil {
		return nil, err
	}
	return st, nil
}

func (s *batchStore) get(ctx context.Context, requestID string) (*Batch, uint64, error) {
	e, err := s.batches.KV().Get(ctx, requestID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("batch %s: %w", requestID, domain.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get batch %s: %w", requestID, err)
	}
	var b Batch
	if err := json.Unmarshal(e.Value(), &b); err != nil {
		return nil, 0, fmt.Errorf("decode batch %s: %w", requestID, err)
	}
	return &b, e.Revision(), nil
}

// put writes b at revision rev (0 creates it).
func (s *batchStore) put(ctx context.Context, b *Batch, rev uint64) (uint64, error) {
	b.UpdatedAt = time.Now().UTC()
	if s.owner != nil {
		// Every write takes the batch over: a batch resumed from a dead
		// owner is this batcher's from its first write on.
		b.Owner = s.owner()
	}
	v, err := json.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("encode batch %s: %w", b.RequestID, err)
	}
	rev, err = s.batches.Put(ctx, b.RequestID, v, rev, false)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("put batch %s: %w", b.RequestID, domain.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("put batch %s: %w", b.RequestID, err)
	}
	return rev, nil
}

func (s *batchStore) remove(ctx context.Context, requestID string) error {
	if err := s.batches.Remove(ctx, requestID, 0); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete batch %s: %w", requestID, err)
	}
	return nil
}

// retireClaims sets the claims batch still holds to expire after the
// retention, before the batch is removed: once its items' outcomes are on
// their orders, a claim only stops an item planned again under the same
// id (an orders bucket rebuilt from the events) from being sent again, and
// the events are gone before the claim is. A claim another batch holds is
// left alone.
func (s *batchStore) retireClaims(ctx context.Context, batch *Batch) error {
	if s.claims.TTL() == 0 {
		return nil
	}
	for _, it := range batch.Items {
		key := events.Token(it.ID)
		for attempt := 1; ; attempt++ {
			e, err := s.claims.KV().Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("read claim of item %s: %w", it.ID, err)
			}
			if string(e.Value()) != batch.RequestID {
				break
			}
			_, err = s.claims.Put(ctx, key, e.Value(), e.Revision(), true)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) || attempt == 5 {
				return fmt.Errorf("set claim of item %s to expire: %w", it.ID, err)
			}
		}
	}
	return nil
}

// claim makes requestID the owner of itemID unless another request owns it
// already; it reports whether requestID owns it now. A claim held by from
// (the batch requestID was split from; empty for none) moves to requestID
// with compare-and-set, so of two batchers finishing the same split, both
// see the item moved once.
func (s *batchStore) claim(ctx context.Context, itemID, requestID, from string) (bool, error) {
	key := events.Token(itemID)
	for range 5 {
		_, err := s.claims.KV().Create(ctx, key, []byte(requestID))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, fmt.Errorf("claim item %s: %w", itemID, err)
		}
		e, err := s.claims.KV().Get(ctx, key)
		if err != nil {
			return false, fmt.Errorf("read claim of item %s: %w", itemID, err)
		}
		switch owner := string(e.Value()); {
		case owner == requestID:
			return true, nil
		case from == "" || owner != from:
			return false, nil
		}
		_, err = s.claims.KV().Update(ctx, key, []byte(requestID), e.Revision())
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, fmt.Errorf("move claim of item %s from %s to %s: %w", itemID, from, requestID, err)
		}
		// Moved meanwhile, by another batcher finishing the same split:
		// read it again.
	}
	return false, fmt.Errorf("claim item %s: %w", itemID, domain.ErrConflict)
}

func (s *batchStore) keys(ctx context.Context) ([]string, error) {
	lister, err := s.batches.KV().ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out, nil
}

// A Cobo item is recorded failed only when Cobo certainly did not make it:
// Cobo reported the item (or its whole batch) Failed, or Cobo refused a
// batch that certainly does not exist. Everything else is reconciled (the
// request_id lookup), waits (credentials, no answer, items Cobo has not
// finished) or alerts (stuck items), and nothing is given up on:
//
//   - A send's answer that is not definite (5xx, 429, timeouts, a lost
//     answer) leaves the batch ready; it is sent again, always with its
//     request_id, after a backoff.
//   - A refusal (4xx) of a send that may follow an effective one (any
//     resend, or an answer to a retry within one call: Batch.MayExist)
//     is checked with the request_id lookup first. So is any answer whose
//     code may mean "request_id already used" (12009, 2040, 30001), which
//     Cobo also uses for other things: found means created; only an empty
//     lookup, made at least SettleAfter after a send that may be in
//     progress, means the batch certainly does not exist.
//   - A refusal of paystream's credentials (401, 403, signature, nonce or
//     key codes) or of the endpoint never fails anything: the items wait,
//     an error is logged, paystream_cobo_credential_errors_total and the
//     waiting-batches gauge rise, and the batch is sent again with its
//     request_id until the credentials work.
//   - A batch that certainly does not exist and holds several items is
//     split in halves, each persisted with a new request_id (its items'
//     claims moved to it) before its first send, so that one item Cobo
//     refuses ends failed alone and the others complete.
//   - A batch Cobo created finishes its items from their statuses when
//     Cobo gives them; without a status field (Cobo's answers before SDK
//     v1.39, and the reference seeds), ledger-only items are complete.
//     Items Cobo has not finished are polled, with a backoff capped at
//     RetryMax, for ever.

// deliver takes a persisted batch as far as it can go now: it sends a
// ready batch, checks a refused one, splits one Cobo certainly refused,
// polls a sent one, and records outcomes on the orders. It returns when
// the batch is retired or waits (Batch.NextAt). Each step is persisted
// before it is acted on, so any batcher can resume the batch after a
// crash, and every send of one batch carries its one request_id.
func (b *Batcher) deliver(ctx context.Context, batch *Batch, rev uint64) {
	log := b.cfg.Logger.With().Str("request_id", batch.RequestID).Int("items", len(batch.Items)).Logger()
	for ctx.Err() == nil {
		moved := false
		switch batch.Status {
		case BatchReady:
			rev, moved = b.send(ctx, batch, rev, log)
		case BatchChecking:
			rev, moved = b.check(ctx, batch, rev, log)
		case BatchSplitting:
			b.split(ctx, batch, rev, log)
		case BatchSent, BatchRejected:
			b.finish(ctx, batch, rev, log)
		default:
			log.Error().Str("status", batch.Status).Msg("batch in an unknown state; left as it is for an operator")
		}
		if !moved {
			return
		}
	}
}

// send sends a ready batch with its request_id and classifies the answer.
// It reports whether the batch moved on (persisted in another status).
func (b *Batcher) send(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) (uint64, bool) {
	// Persisted before sending: whoever resumes the batch after a crash
	// during the send knows that Cobo may hold it.
	batch.MayExist = batch.MayExist || batch.InFlight
	batch.InFlight = true
	batch.Attempts++
	rev, err := b.store.put(ctx, batch, rev)
	if err != nil {
		log.Warn().Err(err).Msg("could not note the send before making it; the batch is left for a later try")
		return rev, false
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	res, err := b.api.CreateBatchAllocation(sctx, toRequest(batch))
	cancel()
	batch.LastSendAt, batch.InFlight = time.Now().UTC(), false

	var apiErr *cobo.APIError
	isAPI := errors.As(err, &apiErr)
	if err != nil && (!isAPI || apiErr.Retryable() || apiErr.Retried) {
		// An attempt of this call got no definite answer: it may have
		// created the batch.
		batch.MayExist = true
	}
	switch {
	case err == nil:
		b.created(batch, res)
	case !isAPI || apiErr.Retryable():
		// No definite answer. Sent again later with the same request_id:
		// if this attempt created the batch, Cobo says so then.
		b.wait(batch, err, log)
	case apiErr.CredentialProblem() || apiErr.EndpointProblem():
		// Cobo did not read the request, but an earlier send may have
		// been read and created the batch.
		if batch.MayExist {
			if found, ferr := b.lookup(ctx, batch); ferr == nil {
				log.Info().Str("batch_allocation_id", found.BatchAllocationID).Int("http_status", apiErr.HTTPStatus).Int("error_code", apiErr.Code).
					Msg("cobo refused a resend, but an earlier send had created the batch")
				b.created(batch, found)
				break
			}
		}
		b.wait(batch, err, log)
	case apiErr.DuplicateRequest() && errors.Is(err, cobo.ErrBatchNotFound) && !batch.MayExist:
		// The first and only send was answered with a code that may mean
		// "request_id already used", and no batch has the request_id: the
		// code meant something else (30001 is also "pricing plan does not
		// support this feature").
		b.refused(batch, apiErr.Error(), log)
	case apiErr.DuplicateRequest() || batch.MayExist:
		// Cobo may hold the batch: look it up before anything else, and
		// never send it again.
		batch.Status, batch.Rejection = BatchChecking, apiErr.Error()
		log.Warn().Err(err).Bool("may_exist", batch.MayExist).Msg("cobo refused a send that may have been created before; looking the batch up by request_id")
	default:
		// A definite refusal of a request Cobo never saw before.
		b.refused(batch, apiErr.Error(), log)
	}
	return b.persistStep(ctx, batch, rev, BatchReady, log)
}

// check looks a batch Cobo refused up by request_id: found means created;
// certainly absent means refused, unless a send may still be in progress
// at Cobo (MayExist, within SettleAfter of the last send), when it waits.
func (b *Batcher) check(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) (uint64, bool) {
	found, err := b.lookup(ctx, batch)
	switch {
	case err == nil:
		log.Info().Str("batch_allocation_id", found.BatchAllocationID).Msg("the refused batch exists at cobo: recorded as sent")
		b.created(batch, found)
	case errors.Is(err, cobo.ErrBatchNotFound):
		settled := batch.LastSendAt.Add(b.cfg.SettleAfter)
		if batch.MayExist && time.Now().Before(settled) {
			batch.Waiting, batch.NextAt = WaitSettling, settled
			log.Info().Time("look_again_at", settled).Msg("no batch has the request_id yet, but an earlier send may still be in progress at cobo; looking again later")
			break
		}
		b.refused(batch, batch.rejection(), log)
	default:
		b.wait(batch, err, log)
	}
	return b.persistStep(ctx, batch, rev, BatchChecking, log)
}

// persistStep writes the batch after a send or check. A batch still in
// from (waiting) is scheduled with backoff, unless a wait set NextAt. It
// reports whether the batch moved on.
func (b *Batcher) persistStep(ctx context.Context, batch *Batch, rev uint64, from string, log zerolog.Logger) (uint64, bool) {
	moved := batch.Status != from
	if moved {
		batch.Retries, batch.NextAt, batch.Waiting = 0, time.Time{}, ""
	} else if batch.Waiting != WaitSettling {
		batch.Retries++
		batch.NextAt = time.Now().Add(b.backoff(batch.Retries)).UTC()
	}
	next, err := b.store.put(ctx, batch, rev)
	if err != nil {
		// Nothing is lost: the batch is tried again from its persisted
		// state, with the same request_id, and a created batch is found.
		log.Warn().Err(err).Str("status", batch.Status).Msg("could not persist the batch's step; it will be tried again with the same request_id")
		return rev, false
	}
	return next, moved
}

// lookup finds the batch by request_id with the send timeout.
func (b *Batcher) lookup(ctx context.Context, batch *Batch) (cobo.BatchAllocation, error) {
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	defer cancel()
	found, err := b.api.FindBatchAllocation(sctx, batch.RequestID)
	if err != nil {
		return found, fmt.Errorf("look up batch %s: %w", batch.RequestID, err)
	}
	return found, nil
}

// created records that Cobo holds the batch: a 201, or found by
// request_id.
func (b *Batcher) created(batch *Batch, res cobo.BatchAllocation) {
	batch.Status, batch.ProviderStatus = BatchSent, res.Status
	if res.BatchAllocationID != "" {
		batch.BatchAllocationID = res.BatchAllocationID
	}
	batch.Waiting, batch.Rejection, batch.LastError = "", "", ""
	b.metrics().batchSize.Observe(float64(len(batch.Items)))
}

// refused settles a batch Cobo refused and certainly does not hold: one
// item is rejected (recorded failed with Cobo's answer); several are split
// in halves under new request_ids.
func (b *Batcher) refused(batch *Batch, reason string, log zerolog.Logger) {
	batch.Rejection, batch.Waiting = reason, ""
	if len(batch.Items) == 1 {
		batch.Status = BatchRejected
		return
	}
	batch.Status = BatchSplitting
	batch.Children = []string{newRequestID(), newRequestID()}
	log.Warn().Str("rejection", reason).Strs("children", batch.Children).
		Msg("cobo refused the batch and holds nothing for it; splitting it so that the valid items still complete")
}

// wait notes why the batch did not move on, logs it, and counts refused
// credentials.
func (b *Batcher) wait(batch *Batch, err error, log zerolog.Logger) {
	batch.Waiting, batch.LastError = waitReason(err), err.Error()
	ev := log.Warn()
	msg := "no definite answer from cobo; the batch is tried again later, a send always with the same request_id"
	switch batch.Waiting {
	case WaitCredentials:
		b.metrics().cobo.credentialErrors.Inc()
		ev = log.Error()
		msg = "cobo refused paystream's API credentials; the items wait (never failed) and the batch is sent again with the same request_id: check -cobo-api-secret-file, the key registered in Cobo Portal for this environment and its permissions, and the clock"
	case WaitEndpoint:
		ev = log.Error()
		msg = "cobo answered that the request went to the wrong place or in the wrong form; the items wait: check -cobo-api-url"
	}
	ev.Err(err).Str("status", batch.Status).Int("attempts", batch.Attempts).Int("retries", batch.Retries).Msg(msg)
}

// waitReason classifies an error that left a batch where it was.
func waitReason(err error) string {
	var apiErr *cobo.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.CredentialProblem():
			return WaitCredentials
		case apiErr.EndpointProblem():
			return WaitEndpoint
		}
	}
	return WaitProvider
}

// rejection is Cobo's refusal of the batch; LastError for batches
// rejected before Rejection existed.
func (b *Batch) rejection() string {
	if b.Rejection != "" {
		return b.Rejection
	}
	return b.LastError
}

// split moves a splitting batch's items into its two children, each
// persisted and claimed before the parent is retired, then sends them.
// Any step may be redone by any batcher: the children's request_ids are
// the parent's persisted Children, and claims move with compare-and-set.
func (b *Batcher) split(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) {
	if len(batch.Children) != 2 || len(batch.Items) < 2 {
		log.Error().Strs("children", batch.Children).Msg("splitting batch without two children and two items; left as it is for an operator")
		return
	}
	half := len(batch.Items) / 2
	parts := [][]domain.AllocationItem{batch.Items[:half], batch.Items[half:]}
	children := make([]*Batch, 0, 2)
	revs := make([]uint64, 0, 2)
	for i, id := range batch.Children {
		c, crev, err := b.child(ctx, batch, id, parts[i])
		if err != nil {
			log.Warn().Err(err).Str("child", id).Msg("could not prepare half of the split batch; the split is finished later")
			return
		}
		children, revs = append(children, c), append(revs, crev)
	}
	if err := b.store.remove(ctx, batch.RequestID); err != nil {
		log.Warn().Err(err).Msg("could not retire the split batch; its halves are sent anyway")
	}
	b.metrics().cobo.splits.Inc()
	log.Info().Strs("children", batch.Children).Msg("batch split")
	for i, c := range children {
		if c.Status != BatchClaiming && len(c.Items) > 0 {
			b.deliver(ctx, c, revs[i])
		}
	}
}

// child returns the half of parent with request_id id, creating and
// claiming it when needed.
func (b *Batcher) child(ctx context.Context, parent *Batch, id string, items []domain.AllocationItem) (*Batch, uint64, error) {
	c, rev, err := b.store.get(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		now := time.Now().UTC()
		c = &Batch{RequestID: id, Status: BatchClaiming, Items: slices.Clone(items), Parent: parent.RequestID,
			ItemsSince: parent.itemsSince(), CreatedAt: now}
		rev, err = b.store.put(ctx, c, 0)
		if errors.Is(err, domain.ErrConflict) {
			// Another batcher finishing the same split created it.
			c, rev, err = b.store.get(ctx, id)
		}
	}
	if err != nil {
		return nil, 0, err
	}
	if c.Status == BatchClaiming {
		rev, err = b.settleClaims(ctx, c, rev)
	}
	return c, rev, err
}

// finish polls a sent batch whose items are not all final, records the
// outcomes on the orders, and retires the batch once every item is final
// (or it was rejected). Otherwise the batch is polled again after a
// backoff capped at RetryMax, for ever.
func (b *Batcher) finish(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) {
	progressed := false
	if batch.Status == BatchSent && !allItemsFinal(batch) {
		changed, err := b.poll(ctx, batch)
		if err != nil {
			b.wait(batch, err, log)
		} else {
			progressed, batch.Waiting, batch.LastError = changed, "", ""
		}
	}
	if err := b.record(ctx, batch); err != nil {
		log.Warn().Err(err).Msg("recording the outcome on orders failed; will retry")
		return
	}
	if batch.Status == BatchRejected || allItemsFinal(batch) {
		if err := b.store.retireClaims(ctx, batch); err != nil {
			// Kept, and retired again when it is resumed: a claim that never
			// expires is the only harm.
			log.Warn().Err(err).Msg("could not set the recorded batch's claims to expire; the batch is retired later")
			return
		}
		if err := b.store.remove(ctx, batch.RequestID); err != nil {
			log.Warn().Err(err).Msg("could not retire the recorded batch")
		}
		return
	}
	// Items still Pending or Transferring at Cobo.
	if progressed {
		batch.Retries = 0
	}
	batch.Retries++
	batch.NextAt = time.Now().Add(b.backoff(batch.Retries)).UTC()
	if _, err := b.store.put(ctx, batch, rev); err != nil {
		log.Warn().Err(err).Msg("could not persist polled statuses")
	}
}

// poll refreshes statuses from GET /payments/batch_allocations/{id} (or,
// without an id, the request_id lookup) and reports whether any changed.
func (b *Batcher) poll(ctx context.Context, batch *Batch) (bool, error) {
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	defer cancel()
	var detail cobo.BatchAllocation
	var err error
	if batch.BatchAllocationID != "" {
		detail, err = b.api.GetBatchAllocation(sctx, batch.BatchAllocationID)
	} else {
		// Cobo's create answer carried no id: the list view has the batch
		// status, enough for items without their own.
		detail, err = b.api.FindBatchAllocation(sctx, batch.RequestID)
		batch.BatchAllocationID = detail.BatchAllocationID
	}
	if err != nil {
		return false, fmt.Errorf("poll batch %s: %w", batch.RequestID, err)
	}
	changed := detail.Status != batch.ProviderStatus
	batch.ProviderStatus = detail.Status
	used := make([]bool, len(detail.AllocationItems))
	for i := range batch.Items {
		it := &batch.Items[i]
		for j, p := range detail.AllocationItems {
			if !used[j] && sameItem(*it, p) {
				used[j] = true
				changed = changed || it.ProviderStatus != p.Status
				it.ProviderStatus = p.Status
				it.ProviderID = p.AllocationItemID
				break
			}
		}
	}
	return changed, nil
}

func sameItem(it domain.AllocationItem, p cobo.AllocationItem) bool {
	return p.Description == it.Description && p.DestinationAccount == it.Destination &&
		p.SourceAccount == it.Source && p.TokenID == it.TokenID && amountEqual(p.Amount, it)
}

func amountEqual(s string, it domain.AllocationItem) bool {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil || !a.Valid {
		return false
	}
	return a.Decimal.Equal(it.Amount)
}

// itemStatus maps the batch's knowledge of an item to paystream's status
// and, for a failure, its reason. Items of a batch Cobo does not hold (yet)
// are planned.
func itemStatus(batch *Batch, it domain.AllocationItem) (string, string) {
	switch batch.Status {
	case BatchRejected:
		return domain.AllocFailed, "refused by cobo, which holds no batch for it: " + batch.rejection()
	case BatchSent:
		return coboItemStatus(it.ProviderStatus, batch.ProviderStatus)
	}
	return domain.AllocPlanned, ""
}

// coboItemStatus maps the statuses Cobo gives an item of a batch it
// created, and the batch, to paystream's. An item's own status decides;
// without one, the batch's does; without either (Cobo's answers before
// the status fields, and the reference seeds) the item is completed, as
// ledger-only allocations complete at once. Cobo's words for unfinished
// items, and words paystream does not know, are pending: polled, and
// reported stuck if they last.
func coboItemStatus(item, batch string) (string, string) {
	switch item {
	case cobo.ItemCompleted:
		return domain.AllocCompleted, ""
	case cobo.ItemFailed:
		return domain.AllocFailed, "cobo reported the item Failed"
	case "":
		switch batch {
		case "", cobo.BatchCompleted:
			return domain.AllocCompleted, ""
		case cobo.BatchFailed:
			// Cobo: Failed means all items failed.
			return domain.AllocFailed, "cobo reported the batch Failed"
		}
	}
	return domain.AllocPending, ""
}

// openItems are the batch's items not final by its own knowledge.
func openItems(batch *Batch) []domain.AllocationItem {
	var out []domain.AllocationItem
	for _, it := range batch.Items {
		if st, _ := itemStatus(batch, it); st != domain.AllocCompleted && st != domain.AllocFailed {
			out = append(out, it)
		}
	}
	return out
}

func allItemsFinal(batch *Batch) bool { return len(openItems(batch)) == 0 }

// record writes each item's outcome on its order, with compare-and-set.
// Items still planned (the batch is not at Cobo) are not written.
func (b *Batcher) record(ctx context.Context, batch *Batch) error {
	byOrder := map[string][]domain.AllocationItem{}
	var orderIDs []string
	for _, it := range batch.Items {
		if byOrder[it.OrderID] == nil {
			orderIDs = append(orderIDs, it.OrderID)
		}
		byOrder[it.OrderID] = append(byOrder[it.OrderID], it)
	}
	for _, orderID := range orderIDs {
		if err := b.recordOrder(ctx, batch, orderID, byOrder[orderID]); err != nil {
			return err
		}
	}
	return nil
}

func (b *Batcher) recordOrder(ctx context.Context, batch *Batch, orderID string, items []domain.AllocationItem) error {
	inBatch := make(map[string]domain.AllocationItem, len(items))
	for _, it := range items {
		inBatch[it.ID] = it
	}
	changed, err := updateItems(ctx, b.orders, orderID, func(cur *domain.AllocationItem) bool {
		it, ok := inBatch[cur.ID]
		if !ok {
			return false
		}
		st, reason := itemStatus(batch, it)
		if st == domain.AllocPlanned || (cur.Status == st && cur.RequestID == batch.RequestID && cur.ProviderStatus == it.ProviderStatus) {
			return false
		}
		cur.Status, cur.Reason = st, reason
		cur.RequestID = batch.RequestID
		cur.ProviderID = batch.BatchAllocationID
		cur.ProviderStatus = it.ProviderStatus
		if cur.Final() {
			cur.StuckSince = nil
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, it := range changed {
		b.metrics().items.WithLabelValues(domain.BackendCobo, it.Status).Inc()
		ev := b.cfg.Logger.Info()
		if it.Status == domain.AllocFailed {
			ev = b.cfg.Logger.Error()
			if batch.Status == BatchRejected {
				b.metrics().cobo.itemsRefused.WithLabelValues(domain.BackendCobo).Inc()
			}
		}
		ev.Str("order_id", orderID).Str("item_id", it.ID).Str("request_id", batch.RequestID).
			Str("batch_allocation_id", batch.BatchAllocationID).Str("amount", it.Amount.String()).Str("token_id", it.TokenID).
			Str("destination", it.Destination).Str("status", it.Status).Str("reason", it.Reason).Msg("allocation item recorded")
	}
	return nil
}
