package allocation

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paystream/paystream/internal/domain"
)

// coboMetrics tell an operator what the Cobo batcher is waiting for and
// what it gave up on. The gauges are set after each full scan of the
// batches bucket (Recover), which every batcher makes: every replica
// reports the same value, so aggregate them with max.
type coboMetrics struct {
	// itemsStuck counts items planned or pending in a batch for longer
	// than StuckAfter.
	itemsStuck prometheus.Gauge
	// batchesWaiting counts batches that did not move on, by reason
	// (Wait*).
	batchesWaiting *prometheus.GaugeVec
	// credentialErrors counts Cobo answers refusing paystream's
	// credentials to a send, lookup or poll of a batch.
	credentialErrors prometheus.Counter
	// itemsRefused counts items recorded failed because the provider
	// refused them and certainly holds nothing for them, by backend.
	itemsRefused *prometheus.CounterVec
	// splits counts refused batches split in two.
	splits prometheus.Counter
}

func newCoboMetrics() *coboMetrics {
	return &coboMetrics{
		itemsStuck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "paystream_allocation_items_stuck",
			Help: "Cobo allocation items still planned or pending longer than -alloc-stuck-after after they entered a batch (the same in every worker: use max).",
		}),
		batchesWaiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "paystream_allocation_batches_waiting",
			Help: "Cobo batches that could not move on, by reason: credentials, endpoint, provider (no definite answer) or settling (the same in every worker: use max).",
		}, []string{"reason"}),
		credentialErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_cobo_credential_errors_total",
			Help: "Cobo answers refusing paystream's API credentials (401, 403, signature, nonce or key error codes) to batch sends, lookups and polls.",
		}),
		itemsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_allocation_items_refused_total",
			Help: "Allocation items recorded failed that no provider holds, by backend: refused by the provider, or invalid when planned and never sent.",
		}, []string{"backend"}),
		splits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_allocation_batch_splits_total",
			Help: "Cobo batches refused and certainly not created, split in two so that the valid items still complete.",
		}),
	}
}

// register registers the metrics on reg, every series at 0 from the start
// so that alerts on them see their first change.
func (m *coboMetrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.itemsStuck, m.batchesWaiting, m.credentialErrors, m.itemsRefused, m.splits)
	for _, r := range waitReasons {
		m.batchesWaiting.WithLabelValues(r)
	}
	m.itemsRefused.WithLabelValues(domain.BackendCobo)
	m.itemsRefused.WithLabelValues(domain.BackendBitGo)
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
	d := b.cfg.RecoverAfter
	for i := 1; i < retries && d < b.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, b.cfg.RetryMax)
}
