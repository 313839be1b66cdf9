package allocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
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

// OrderRepo reads and writes order state with compare-and-set.
type OrderRepo interface {
	Get(ctx context.Context, orderID string) (*domain.Order, uint64, error)
	Put(ctx context.Context, o *domain.Order, rev uint64) (uint64, error)
}

// Defaults for BatcherConfig.
const (
	DefaultBatchMax     = 50
	DefaultBatchWait    = 2 * time.Second
	DefaultRecoverEvery = 5 * time.Second
	DefaultRecoverAfter = 30 * time.Second
	DefaultIntentAck    = time.Minute
	DefaultRetryMax     = 5 * time.Minute
	DefaultSettleAfter  = 2 * time.Minute
	DefaultStuckAfter   = 30 * time.Minute
)

// BatcherConfig configures a Batcher.
type BatcherConfig struct {
	// BatchMax is the most items in one Cobo batch (Cobo's list limit is 50).
	BatchMax int
	// BatchWait is how long the first item of a batch waits for company.
	BatchWait time.Duration
	// RecoverEvery is how often unfinished batches are looked for.
	RecoverEvery time.Duration
	// RecoverAfter is how old an unfinished batch must be before any
	// batcher resumes it, so a live batcher is not second-guessed.
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
	Logger     zerolog.Logger
	Metrics    *Metrics
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
	case c.RetryMax <= 0 || c.SettleAfter < 0 || c.StuckAfter <= 0:
		return fmt.Errorf("RetryMax and StuckAfter must be positive and SettleAfter not negative, got %s, %s and %s", c.RetryMax, c.StuckAfter, c.SettleAfter)
	}
	return nil
}

// Batcher groups planned Cobo items into batch allocations and delivers
// each item exactly once: an item is claimed by one batch, the batch is
// persisted with its request_id before the first send, every resend uses
// that request_id, and the outcome is recorded on the orders. Any number
// of batchers may run; each resumes batches others left unfinished.
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
	st, err := openBatchStore(ctx, js)
	if err != nil {
		return nil, err
	}
	return &Batcher{js: js, store: st, api: api, orders: orders, cfg: cfg, stuck: map[string]bool{}}, nil
}

// Run batches until ctx is done. A batch being sent when ctx ends is left
// persisted and is resumed by a batcher later. A failed lookup of the
// shared consumer is retried every second; Run returns its error only
// when lookups have failed for a minute.
func (b *Batcher) Run(ctx context.Context) error {
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
	it, err := cons.Messages(jetstream.PullMaxMessages(4*b.cfg.BatchMax), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("batcher consume: %w", err)
	}
	defer it.Stop()

	var pending []jetstream.Msg
	var firstAt time.Time
	nextRecover := time.Now()
	for ctx.Err() == nil {
		if time.Now().After(nextRecover) {
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
			pending = append(pending, msg)
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
	for _, m := range pending {
		_ = m.Nak()
	}
	return nil
}

// flush verifies intents against their orders, turns the sendable ones
// into one persisted, claimed batch, acks them, and sends the batch.
//
// An intent only names an item: the batch holds the order's copy of it
// (see intents.go), loaded with one Get per distinct order. For the
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

// Recover resumes every batch last touched more than olderThan ago and
// due (NextAt passed): it finishes claims, resends ready batches with
// their request_id, looks up and splits refused ones, polls sent ones and
// records outcomes. On the way it marks stuck items (StuckAfter) on their
// orders and, after a scan of every batch, sets the stuck-item and
// waiting-batch gauges. It returns how many batches it resumed.
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
		if now.Sub(batch.UpdatedAt) < olderThan || now.Before(batch.NextAt) {
			continue
		}
		n++
		b.cfg.Logger.Info().Str("request_id", batch.RequestID).Str("status", batch.Status).Int("attempts", batch.Attempts).Msg("resuming batch")
		if batch.Status == BatchClaiming {
			if rev, err = b.settleClaims(ctx, batch, rev); err != nil || batch.Status != BatchReady {
				continue
			}
		}
		b.deliver(ctx, batch, rev)
	}
	if complete {
		b.metrics().cobo.itemsStuck.Set(float64(len(stuck)))
		for _, r := range waitReasons {
			b.metrics().cobo.batchesWaiting.WithLabelValues(r).Set(float64(waiting[r]))
		}
		b.forgetStuck(open)
	}
	return n
}

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

// Metrics are the allocation pipeline's Prometheus metrics.
type Metrics struct {
	items     *prometheus.CounterVec
	batchSize prometheus.Histogram
	apiTime   *prometheus.HistogramVec
	apiErrors *prometheus.CounterVec
	// bitgoSends counts BitGo send and poll answers by result.
	bitgoSends *prometheus.CounterVec
	// orphans counts intents the orphan sweep published again.
	orphans *prometheus.CounterVec
	// intentsRejected counts intents not sent because they do not name an
	// item as planned on its order, by backend and reason (see Reject*).
	intentsRejected *prometheus.CounterVec
	// cobo are the Cobo batcher's reconciliation metrics (health.go).
	cobo *coboMetrics
}

var nopMetrics = newMetrics()

func newMetrics() *Metrics {
	return &Metrics{
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_allocation_items_total", Help: "Allocation item outcomes recorded on orders, by backend and status.",
		}, []string{"backend", "status"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "paystream_allocation_batch_size", Help: "Items per Cobo batch allocation sent.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 40, 50},
		}),
		apiTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "paystream_cobo_api_seconds", Help: "Cobo API call latency by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"endpoint"}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_cobo_api_errors_total", Help: "Cobo API errors by endpoint, HTTP status and error_code.",
		}, []string{"endpoint", "status", "code"}),
		orphans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_allocation_orphans_republished_total", Help: "Planned allocation items whose intent the orphan sweep published again, by backend.",
		}, []string{"backend"}),
		bitgoSends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_bitgo_answers_total", Help: "BitGo allocation answers by result (cleared, reserved, released, refused, error).",
		}, []string{"result"}),
		intentsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_allocation_intents_rejected_total",
			Help: "Allocation intents acked without sending because they do not name an item as planned on its order, by backend and reason.",
		}, []string{"backend", "reason"}),
		cobo: newCoboMetrics(),
	}
}

// NewMetrics registers the allocation metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := newMetrics()
	reg.MustRegister(m.items, m.batchSize, m.apiTime, m.apiErrors, m.bitgoSends, m.intentsRejected, m.orphans)
	m.cobo.register(reg)
	// Every series exists from the start at 0, so an alert on its increase
	// fires on the first forged intent too.
	for _, backend := range []string{domain.BackendCobo, domain.BackendBitGo} {
		for _, reason := range rejectReasons {
			m.intentsRejected.WithLabelValues(backend, reason)
		}
	}
	return m
}

// ObserveCobo is a cobo.ClientConfig.Observe hook feeding the API metrics.
func (m *Metrics) ObserveCobo(endpoint string, status, code int, d time.Duration) {
	m.apiTime.WithLabelValues(endpoint).Observe(d.Seconds())
	if status == 0 || status >= 400 {
		m.apiErrors.WithLabelValues(endpoint, fmt.Sprint(status), fmt.Sprint(code)).Inc()
	}
}

// ItemPlanned counts an item planned on an order (status planned or, when
// its amount could not be computed, failed).
func (m *Metrics) ItemPlanned(it domain.AllocationItem) {
	m.items.WithLabelValues(it.Backend, it.Status).Inc()
	if it.Status == domain.AllocFailed {
		// Invalid when planned: never sent, so no provider holds it.
		m.cobo.itemsRefused.WithLabelValues(it.Backend).Inc()
	}
}
