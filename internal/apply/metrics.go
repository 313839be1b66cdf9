package apply

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// Metrics are the business metrics of applying events: what the workers
// export. A nil *Metrics records nothing (replay, `worker reconcile`).
type Metrics struct {
	events         *prometheus.CounterVec
	transitions    *prometheus.CounterVec
	completed      prometheus.Counter
	late           prometheus.Counter
	conflictFinals prometheus.Counter
	unclassified   *prometheus.CounterVec
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_worker_events_total", Help: "Events handled, by type and result.",
		}, []string{"type", "result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_order_transitions_total", Help: "Order status changes committed, by new status; summed over workers, final statuses count orders.",
		}, []string{"status"}),
		completed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_orders_completed_total", Help: "Orders seen reaching Completed for the first time.",
		}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_late_payments_total", Help: "Late payments recorded at full precision.",
		}),
		conflictFinals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_order_conflicting_finals_total", Help: "Final statuses that contradicted an order's stored final status (kept).",
		}),
		unclassified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paystream_reconcile_unclassified_transactions_total",
			Help: "Transactions recorded on an order without being credited because whether they are late payments is unknown (reason lateness_unknown, ambiguous, no_amount, or before_horizon: a late payment made before the state of its order expired); an operator decides.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.events, m.transitions, m.completed, m.late, m.conflictFinals, m.unclassified)
	// Every series exists from the start at 0, so an alert on its increase
	// fires on the first one.
	for _, r := range []string{domain.UnclassifiedLatenessUnknown, domain.UnclassifiedAmbiguous, domain.UnclassifiedNoAmount, domain.UnclassifiedBeforeHorizon} {
		m.unclassified.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) handled(eventType, result string) {
	if m != nil {
		m.events.WithLabelValues(typeLabel(eventType), result).Inc()
	}
}

func (m *Metrics) transition(to domain.OrderStatus) {
	if m != nil {
		m.transitions.WithLabelValues(string(to)).Inc()
	}
}

func (m *Metrics) orderCompleted() {
	if m != nil {
		m.completed.Inc()
	}
}

func (m *Metrics) lateRecorded() {
	if m != nil {
		m.late.Inc()
	}
}

func (m *Metrics) conflictingFinal() {
	if m != nil {
		m.conflictFinals.Inc()
	}
}

func (m *Metrics) unclassifiedTx(reason string) {
	if m != nil {
		m.unclassified.WithLabelValues(reason).Inc()
	}
}

// typeLabel bounds metric cardinality: unknown types share one label.
func typeLabel(t string) string {
	switch t {
	case cobo.EventOrderStatusUpdated, cobo.EventLegacyStatusUpdated, cobo.EventOrderUpdated,
		cobo.EventTransactionLate, cobo.EventTransactionCompleted:
		return t
	}
	return "other"
}
