package events

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// LagCollector exports how far a durable consumer is behind, polled from
// consumer info: messages not yet delivered (pending), delivered but not
// acked (ack-pending), and pull requests waiting. Every replica reports
// the same shared consumer, so aggregate with max, not sum.
type LagCollector struct {
	pending, ackPending, waiting *prometheus.GaugeVec
	errors                       prometheus.Counter
}

// NewLagCollector registers the lag gauges on reg.
func NewLagCollector(reg prometheus.Registerer) *LagCollector {
	l := &LagCollector{
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "paystream_consumer_pending", Help: "Messages of the stream the durable consumer has not delivered yet (polled from consumer info).",
		}, []string{"consumer"}),
		ackPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "paystream_consumer_ack_pending", Help: "Messages delivered to some replica and not acked yet (polled from consumer info).",
		}, []string{"consumer"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "paystream_consumer_waiting_pulls", Help: "Pull requests waiting on the consumer (idle replicas).",
		}, []string{"consumer"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "paystream_consumer_info_errors_total", Help: "Failed consumer info polls.",
		}),
	}
	reg.MustRegister(l.pending, l.ackPending, l.waiting, l.errors)
	return l
}

// Poll updates the gauges for every consumer every interval until ctx is
// done. A failed poll keeps the last values and is counted and logged at
// debug level: lag is advisory, and NATS being away is reported elsewhere.
func (l *LagCollector) Poll(ctx context.Context, interval time.Duration, log zerolog.Logger, consumers ...jetstream.Consumer) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, c := range consumers {
			l.observe(ctx, c, log)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *LagCollector) observe(ctx context.Context, c jetstream.Consumer, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		if ctx.Err() == nil {
			l.errors.Inc()
			log.Debug().Err(err).Msg("consumer info poll failed")
		}
		return
	}
	l.pending.WithLabelValues(info.Name).Set(float64(info.NumPending))
	l.ackPending.WithLabelValues(info.Name).Set(float64(info.NumAckPending))
	l.waiting.WithLabelValues(info.Name).Set(float64(info.NumWaiting))
}
