package allocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// JetStream resources of the allocation pipeline.
const (
	// IntentStream carries planned items from the order handlers to the
	// batchers: paystream.alloc.<backend>.<order>.
	IntentStream        = "PAYSTREAM_ALLOCATIONS"
	IntentSubjectPrefix = "paystream.alloc"
	// BatcherConsumer is the durable consumer all batchers share.
	BatcherConsumer = "paystream-batcher"
	// BatchesBucket holds batches from before their first send until their
	// outcome is recorded on the orders.
	BatchesBucket = "paystream_batches"
	// ClaimsBucket maps each item id to the request it was sent under, so
	// an item joins exactly one batch.
	ClaimsBucket = "paystream_alloc_claims"
)

// EnsureResources creates the intent stream and the buckets when they do
// not exist (never changing existing ones, see events.EnsureStream), the
// buckets with per-key TTLs for cfg.Retention, and creates or updates the
// batcher and BitGo consumers with ackWait (DefaultIntentAck in the
// workers). The owners bucket (OwnersBucket) is not required: when it
// cannot be created (NATS permissions from before it existed) the error
// is logged on cfg.Logger and the senders run without heartbeats, taking
// over each other's work by age only.
func EnsureResources(ctx context.Context, js jetstream.JetStream, cfg events.StreamConfig, ackWait time.Duration) error {
	cfg = cfg.WithDefaults()
	if _, err := cfg.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        IntentStream,
		Description: "allocation items planned on orders, waiting to be batched",
		Subjects:    []string{IntentSubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
	}); err != nil {
		return err
	}
	for _, c := range []struct{ name, desc, backend string }{
		{BatcherConsumer, "paystream Cobo batchers", domain.BackendCobo},
		{BitGoConsumer, "paystream BitGo senders", domain.BackendBitGo},
	} {
		// MaxDeliver is unlimited: an intent is only ever acked once its
		// outcome is durable, and dropping one would lose money movement.
		if _, err := events.EnsureDurable(ctx, js, IntentStream, jetstream.ConsumerConfig{
			Durable:       c.name,
			Description:   c.desc,
			FilterSubject: IntentSubjectPrefix + "." + c.backend + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxDeliver:    -1,
			MaxAckPending: 10000,
		}); err != nil {
			return err
		}
	}
	for _, b := range []struct{ name, desc string }{
		{BatchesBucket, "allocation batches not yet recorded on their orders"},
		{ClaimsBucket, "allocation item id -> request id"},
		{BitGoRequestsBucket, "BitGo item id -> prepared, signed request and its last outcome"},
		{OutboxBucket, "orders with allocation items planned, until none is left planned (the orphan sweep's worklist)"},
	} {
		if _, err := cfg.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
			Bucket: b.name, Description: b.desc, Storage: jetstream.FileStorage, Replicas: cfg.Replicas, History: 1,
			LimitMarkerTTL: cfg.Retention.MarkerTTL(),
		}); err != nil {
			return err
		}
	}
	if _, err := cfg.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket: OwnersBucket, Description: "heartbeats of the running batchers and BitGo senders: owner id -> component, host, pid",
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas, History: 1, TTL: ownersMaxAge,
	}); err != nil {
		cfg.Logger.Error().Err(err).Str("bucket", OwnersBucket).
			Msg("cannot create the owners bucket; batchers and BitGo senders run without heartbeats, and take over a dead process's work only after the fallback age: allow the worker user this bucket (deploy/nats/accounts.conf)")
	}
	return nil
}

// JetStream resources of the BitGo sender.
const (
	// BitGoConsumer is the durable consumer all BitGo senders share; it
	// reads paystream.alloc.bitgo.>.
	BitGoConsumer = "paystream-bitgo"
	// BitGoRequestsBucket keeps each item's signed request from before its
	// first send, what was tried and BitGo's last answer (BitGoRecord).
	BitGoRequestsBucket = "paystream_bitgo_requests"
)

// OutboxBucket marks the orders that have allocation items planned: one
// key per order, written before their intents are published and removed by
// the orphan sweep once no item of the order is planned any more. It is
// the sweep's worklist, so the sweep reads the orders with planned items
// instead of every order ever seen.
const OutboxBucket = "paystream_outbox"

// outboxMark is the value of an OutboxBucket key.
type outboxMark struct {
	OrderID  string    `json:"order_id"`
	MarkedAt time.Time `json:"marked_at"`
}

// Outbox publishes an order's planned items to the intent stream. The item
// id is the message id, so publishing again is harmless.
type Outbox struct {
	js jetstream.JetStream

	mu    sync.Mutex
	marks jetstream.KeyValue
}

// NewOutbox returns an Outbox on js. EnsureResources must have run.
func NewOutbox(js jetstream.JetStream) *Outbox { return &Outbox{js: js} }

// Publish marks o in OutboxBucket and publishes every item of o still
// planned. Call it after the order's state is committed and before the
// event is acked: a crash in between redelivers the event, and the items
// are published then. Should every delivery fail (and the event be
// dead-lettered), the mark lets the orphan sweep publish them later.
func (p *Outbox) Publish(ctx context.Context, o *domain.Order) (int, error) {
	planned := plannedItems(o)
	if len(planned) == 0 {
		return 0, nil
	}
	if err := p.mark(ctx, o.OrderID); err != nil {
		return 0, err
	}
	for i, it := range planned {
		if _, err := p.publish(ctx, it, it.ID); err != nil {
			return i, err
		}
	}
	return len(planned), nil
}

func plannedItems(o *domain.Order) []domain.AllocationItem {
	var out []domain.AllocationItem
	for _, it := range o.Allocations {
		if it.Status == domain.AllocPlanned {
			out = append(out, it)
		}
	}
	return out
}

// publish publishes it as an intent with message id msgID. duplicate is
// true when the stream had that message id already.
func (p *Outbox) publish(ctx context.Context, it domain.AllocationItem, msgID string) (duplicate bool, err error) {
	b, err := json.Marshal(it)
	if err != nil {
		return false, fmt.Errorf("encode item %s: %w", it.ID, err)
	}
	msg := nats.NewMsg(IntentSubjectPrefix + "." + it.Backend + "." + events.Token(it.OrderID))
	msg.Data = b
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	// Workers publish the same intent at once (an outbox and a sweep, two
	// sweeps, a redelivery): on a replicated stream the second waits for
	// the first instead of failing.
	ack, err := events.PublishDeduplicated(ctx, p.js, msg, IntentStream)
	if err != nil {
		return false, fmt.Errorf("publish allocation item %s: %w", it.ID, err)
	}
	return ack.Duplicate, nil
}

func (p *Outbox) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.marks == nil {
		kv, err := p.js.KeyValue(ctx, OutboxBucket)
		if err != nil {
			return nil, fmt.Errorf("open bucket %s: %w", OutboxBucket, err)
		}
		p.marks = kv
	}
	return p.marks, nil
}

// mark records that orderID has planned items. An existing mark is kept:
// its age is how long the order has had planned items at least.
func (p *Outbox) mark(ctx context.Context, orderID string) error {
	kv, err := p.bucket(ctx)
	if err != nil {
		return err
	}
	v, err := json.Marshal(outboxMark{OrderID: orderID, MarkedAt: time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("encode outbox mark of order %s: %w", orderID, err)
	}
	if _, err := kv.Create(ctx, events.Token(orderID), v); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("mark order %s in %s: %w", orderID, OutboxBucket, err)
	}
	return nil
}

// Defaults for SweeperConfig.
const (
	DefaultOrphanAfter = 5 * time.Minute
)

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	// OrphanAfter is how long an order's items may stay planned before
	// their intents are published again.
	OrphanAfter time.Duration
	// Every is how often the sweep runs; OrphanAfter/2, within [100 ms,
	// 1 min], when zero.
	Every time.Duration
	// Retention is how long the marker of a removed mark is kept (the
	// workers' -retention): events.DefaultRetention when zero.
	Retention time.Duration
	Logger    zerolog.Logger
	Metrics   *Metrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c SweeperConfig) WithDefaults() SweeperConfig {
	if c.OrphanAfter == 0 {
		c.OrphanAfter = DefaultOrphanAfter
	}
	if c.Every == 0 {
		c.Every = min(max(c.OrphanAfter/2, 100*time.Millisecond), time.Minute)
	}
	if c.Retention == 0 {
		c.Retention = events.DefaultRetention
	}
	return c
}

// Validate reports the first invalid field by name.
func (c SweeperConfig) Validate() error {
	switch {
	case c.OrphanAfter <= 0:
		return fmt.Errorf("OrphanAfter must be positive, got %s", c.OrphanAfter)
	case c.Every <= 0:
		return fmt.Errorf("Every must be positive, got %s", c.Every)
	case c.Retention < time.Second:
		return fmt.Errorf("Retention must be at least 1s, got %s", c.Retention)
	}
	return nil
}

// Sweeper publishes again the intents of items left planned with no
// intent: their order was committed, but every outbox publish failed and
// the event was dead-lettered, or the intent was lost. Every worker runs
// one; concurrent sweeps are harmless, because a round's message id is the
// same in every process (the intent stream keeps one), and a claim or a
// persisted BitGo request keeps an item with its one sender anyway.
type Sweeper struct {
	outbox *Outbox
	// marks writes the outbox bucket: a removed mark leaves a marker that
	// expires after the retention.
	marks    *events.ExpiringKV
	orders   OrderRepo
	claims   jetstream.KeyValue
	requests jetstream.KeyValue
	cfg      SweeperConfig
}

// NewSweeper returns a Sweeper. EnsureResources must have run.
func NewSweeper(ctx context.Context, js jetstream.JetStream, orders OrderRepo, cfg SweeperConfig) (*Sweeper, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sweeper config: %w", err)
	}
	s := &Sweeper{outbox: NewOutbox(js), orders: orders, cfg: cfg}
	marks, err := s.outbox.bucket(ctx)
	if err != nil {
		return nil, err
	}
	if s.marks, err = events.OpenExpiringKV(ctx, js, marks, events.Retention{Keep: cfg.Retention}, cfg.Logger); err != nil {
		return nil, err
	}
	if s.claims, err = js.KeyValue(ctx, ClaimsBucket); err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", ClaimsBucket, err)
	}
	if s.requests, err = js.KeyValue(ctx, BitGoRequestsBucket); err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", BitGoRequestsBucket, err)
	}
	return s, nil
}

// Run sweeps every cfg.Every until ctx is done.
func (s *Sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.Warn().Err(err).Msg("orphan sweep failed; it runs again")
			}
		}
	}
}

// Sweep looks at every order marked longer than OrphanAfter ago: it
// publishes again each planned item no sender holds, and removes the mark
// of an order with nothing left planned. It returns how many intents it
// published.
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	lister, err := s.outbox.marks.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", OutboxBucket, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	n := 0
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		m, err := s.sweepOrder(ctx, k)
		n += m
		if err != nil {
			s.cfg.Logger.Warn().Err(err).Str("key", k).Msg("orphan sweep of an order failed; it runs again")
		}
	}
	return n, nil
}

func (s *Sweeper) sweepOrder(ctx context.Context, key string) (int, error) {
	e, err := s.outbox.marks.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read mark %s: %w", key, err)
	}
	if time.Since(e.Created()) < s.cfg.OrphanAfter {
		return 0, nil
	}
	var m outboxMark
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return 0, fmt.Errorf("decode mark %s: %w", key, err)
	}
	o, _, err := s.orders.Get(ctx, m.OrderID)
	if err != nil && !errors.Is(err, domain.ErrNotFound) {
		return 0, fmt.Errorf("load order %s: %w", m.OrderID, err)
	}
	var planned []domain.AllocationItem
	if o != nil {
		planned = plannedItems(o)
	}
	if len(planned) == 0 {
		return 0, s.unmark(ctx, e, m.OrderID)
	}
	// One message id per item and round, the same in every worker: their
	// concurrent sweeps store one intent, and the next round may try again.
	round := time.Now().UnixNano() / int64(s.cfg.OrphanAfter)
	n := 0
	for _, it := range planned {
		held, err := s.held(ctx, it)
		if err != nil {
			return n, err
		}
		if held {
			continue
		}
		dup, err := s.outbox.publish(ctx, it, fmt.Sprintf("%s:orphan:%d", it.ID, round))
		if err != nil {
			return n, err
		}
		if dup {
			// Another worker's sweep of this round published it.
			continue
		}
		n++
		s.metrics().orphans.WithLabelValues(it.Backend).Inc()
		s.cfg.Logger.Warn().Str("order_id", it.OrderID).Str("item_id", it.ID).Time("marked_at", m.MarkedAt).
			Msg("allocation item planned with no intent; published again")
	}
	return n, nil
}

// held reports whether a sender holds it already: a batch claimed it, or
// a BitGo request was persisted for it. That sender finishes it (and its
// own recovery resumes it), so publishing it again would change nothing.
func (s *Sweeper) held(ctx context.Context, it domain.AllocationItem) (bool, error) {
	kv := s.claims
	if it.Backend == domain.BackendBitGo {
		kv = s.requests
	}
	_, err := kv.Get(ctx, events.Token(it.ID))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	}
	return false, fmt.Errorf("look up sender of item %s: %w", it.ID, err)
}

// unmark removes a mark if it is still the revision read. Planning that
// raced the removal found the mark there and kept it, so the order is read
// again afterwards and marked anew when it has planned items: no planned
// item is left without a mark.
func (s *Sweeper) unmark(ctx context.Context, e jetstream.KeyValueEntry, orderID string) error {
	err := s.marks.Remove(ctx, e.Key(), e.Revision())
	if revisionMoved(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove mark %s: %w", e.Key(), err)
	}
	o, _, err := s.orders.Get(ctx, orderID)
	if errors.Is(err, domain.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load order %s: %w", orderID, err)
	}
	if len(plannedItems(o)) > 0 {
		return s.outbox.mark(ctx, orderID)
	}
	return nil
}

// revisionMoved reports a compare-and-set that lost: another writer
// changed the key first (10071, or 10164 on replicated streams).
func revisionMoved(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (s *Sweeper) metrics() *Metrics {
	if s.cfg.Metrics == nil {
		return nopMetrics
	}
	return s.cfg.Metrics
}
