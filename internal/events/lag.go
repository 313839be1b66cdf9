package events

import (
	"context"
	"errors"
	"fmt"
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

// GoneAfter is how many polls in a row must find a consumer missing
// before Poll reports it gone: one answer during a leader election is not
// proof.
const GoneAfter = 3

// LagTarget is a consumer Poll reads.
type LagTarget struct {
	jetstream.Consumer
	// Pulled says this process pulls from the consumer: Poll then ends
	// when it is gone.
	Pulled bool
}

// Poll updates the gauges for every target every interval until ctx is
// done, then returns nil. A failed poll keeps the last values and is
// counted and logged at debug level: lag is advisory, and NATS being away
// is reported elsewhere. Poll also watches that the consumers this process
// pulls from exist: when one is not found GoneAfter polls in a row, it
// returns an error wrapping ErrConsumerGone, since this process receives
// nothing from it any more.
func (l *LagCollector) Poll(ctx context.Context, interval time.Duration, log zerolog.Logger, targets ...LagTarget) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	missing := make([]int, len(targets))
	for {
		for i, c := range targets {
			err := l.observe(ctx, c, log)
			if !c.Pulled || !errors.Is(err, jetstream.ErrConsumerNotFound) {
				missing[i] = 0
				continue
			}
			if missing[i]++; missing[i] >= GoneAfter {
				return fmt.Errorf("consumer %s: %w: not found %d polls in a row: %w", consumerName(c), ErrConsumerGone, missing[i], err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// observe polls c's info once and returns the error of a failed poll.
func (l *LagCollector) observe(ctx context.Context, c jetstream.Consumer, log zerolog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		if ctx.Err() == nil {
			l.errors.Inc()
			log.Debug().Err(err).Msg("consumer info poll failed")
		}
		return err
	}
	l.pending.WithLabelValues(info.Name).Set(float64(info.NumPending))
	l.ackPending.WithLabelValues(info.Name).Set(float64(info.NumAckPending))
	l.waiting.WithLabelValues(info.Name).Set(float64(info.NumWaiting))
	return nil
}

func consumerName(c jetstream.Consumer) string {
	if info := c.CachedInfo(); info != nil {
		return info.Name
	}
	return "?"
}
