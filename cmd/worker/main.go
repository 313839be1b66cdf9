// Command worker consumes stored webhooks and keeps every pay-in order's
// state. Run any number of replicas against the same NATS.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/worker"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("worker", getenv, stdout)
	natsURL := fs.String("nats-url", "PAYSTREAM_NATS_URL", worker.DefaultNATSURL, "NATS server list")
	metricsListen := fs.String("metrics-listen", "PAYSTREAM_METRICS_LISTEN", worker.DefaultMetricsListen, "serves /metrics, /healthz and /readyz; - disables")
	replicas := fs.Int("stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "JetStream replicas for the DLQ stream and orders bucket")
	concurrency := fs.Int("concurrency", "PAYSTREAM_CONCURRENCY", events.DefaultConcurrency, "events processed at once by this worker")
	maxDeliver := fs.Int("max-deliver", "PAYSTREAM_MAX_DELIVER", events.DefaultMaxDeliver, "deliveries before an event is dead-lettered")
	ackWait := fs.Duration("ack-wait", "PAYSTREAM_ACK_WAIT", events.DefaultAckWait, "redelivery delay after a worker dies mid-event")
	logLevel := fs.String("log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	natsFlags := cli.NATSAuthFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := cli.NewLogger(stdout, *logLevel, *logFormat, "worker")
	if err != nil {
		return err
	}
	natsOpts, err := natsFlags.Options()
	if err != nil {
		return err
	}
	return worker.Run(ctx, worker.Config{
		NATSURL:       *natsURL,
		NATSOptions:   natsOpts,
		MetricsListen: *metricsListen,
		Stream:        events.StreamConfig{Replicas: *replicas},
		Consumer:      events.ConsumerConfig{Concurrency: *concurrency, MaxDeliver: *maxDeliver, AckWait: *ackWait},
		Logger:        log,
	})
}
