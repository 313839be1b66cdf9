package allocation

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paystream/paystream/internal/domain"
)

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
	// cobo are the Cobo batcher's reconciliation metrics (coboMetrics).
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
