package reconcile

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the reconciler's Prometheus metrics. A nil *Metrics counts
// nothing.
type Metrics struct {
	checked, missing, repaired prometheus.Counter
	passes, errors             *prometheus.CounterVec
	// source is the reconciler whose point age the gauge reports.
	source atomic.Pointer[Reconciler]
}

// Pass results and error stages, each series present from the start.
var (
	passResults = []string{"completed", "failed", "skipped"}
	errorStages = []string{"list", "read", "apply", "invalid_order"}
)

// NewMetrics registers the reconciliation metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		checked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_reconcile_orders_checked_total",
			Help: "Orders of Cobo's order list compared with paystream's state by reconciliation passes.",
		}),
		missing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_reconcile_orders_missing_total",
			Help: "Orders a pass found Cobo has final while paystream does not, or with completed transactions paystream lacks (counted by every pass that finds one).",
		}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_reconcile_orders_repaired_total",
			Help: "Missing orders whose every gap a pass closed, through the same core as a webhook.",
		}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_reconcile_passes_total",
			Help: "Reconciliation passes by result: completed, failed (the point stays), skipped (another worker's pass was recent).",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_reconcile_errors_total",
			Help: "Reconciliation failures by stage: list (Cobo's order list), read (order state), apply, invalid_order (an item that can never be applied).",
		}, []string{"stage"}),
	}
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "paystream_reconcile_point_age_seconds",
		Help: "Age of the newest reconciled point this worker knows (the start of the last complete pass of any worker); before it knows one, how long it has run without.",
	}, func() float64 {
		if r := m.source.Load(); r != nil {
			return r.pointAge().Seconds()
		}
		return 0
	})
	reg.MustRegister(m.checked, m.missing, m.repaired, m.passes, m.errors, age)
	for _, r := range passResults {
		m.passes.WithLabelValues(r)
	}
	for _, s := range errorStages {
		m.errors.WithLabelValues(s)
	}
	return m
}

func (m *Metrics) watch(r *Reconciler) {
	if m != nil {
		m.source.Store(r)
	}
}

// order counts an order checked, missing or repaired.
func (m *Metrics) order(what string) {
	if m == nil {
		return
	}
	switch what {
	case "checked":
		m.checked.Inc()
	case "missing":
		m.missing.Inc()
	case "repaired":
		m.repaired.Inc()
	}
}

func (m *Metrics) pass(result string) {
	if m != nil {
		m.passes.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) error(stage string) {
	if m != nil {
		m.errors.WithLabelValues(stage).Inc()
	}
}
