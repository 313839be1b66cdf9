// Command ingest receives Cobo webhooks, verifies them and stores them on
// NATS JetStream before answering.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/webhook"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("ingest", getenv, stdout)
	listen := fs.String("listen", "PAYSTREAM_LISTEN", ingest.DefaultListen, "public webhook listener")
	adminListen := fs.String("admin-listen", "PAYSTREAM_ADMIN_LISTEN", ingest.DefaultAdminListen, "admin listener: health, metrics, orders")
	adminTokenFile := fs.String("admin-token-file", "PAYSTREAM_ADMIN_TOKEN_FILE", "", "file holding the admin Bearer token; empty disables admin auth")
	natsURL := fs.String("nats-url", "PAYSTREAM_NATS_URL", "", "NATS server list; empty starts an embedded JetStream server")
	natsListen := fs.String("nats-listen", "PAYSTREAM_NATS_LISTEN", ingest.DefaultNATSListen, "embedded server's client listener")
	dataDir := fs.String("data-dir", "PAYSTREAM_DATA_DIR", ingest.DefaultDataDir, "embedded server's storage directory")
	natsTLSCert := fs.String("nats-listen-tls-cert", "PAYSTREAM_NATS_LISTEN_TLS_CERT", "", "certificate of the embedded server's client listener (required when -nats-listen is not loopback)")
	natsTLSKey := fs.String("nats-listen-tls-key", "PAYSTREAM_NATS_LISTEN_TLS_KEY", "", "key of -nats-listen-tls-cert")
	trust := cli.CoboTrustFlags(fs)
	maxSkew := fs.Duration("max-skew", "PAYSTREAM_MAX_SKEW", 0, "reject Biz-Timestamp outside now±skew; 0 disables")
	replicas := fs.Int("stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "JetStream replicas for streams and buckets (3 on a cluster)")
	maxAge := fs.Duration("stream-max-age", "PAYSTREAM_STREAM_MAX_AGE", events.DefaultMaxAge, "how long events are kept for replay")
	dedup := fs.Duration("dedup-window", "PAYSTREAM_DEDUP_WINDOW", events.DefaultDuplicateWindow, "how long event_ids are remembered for dedup")
	storeSync := fs.String("store-sync", "PAYSTREAM_STORE_SYNC", "always", "embedded server: fsync every event before answering 200 (always), or only every <duration> (faster; an OS crash or power loss loses what was answered since)")
	storeTimeout := fs.Duration("store-timeout", "PAYSTREAM_STORE_TIMEOUT", 1500*time.Millisecond, "deadline to store an event before answering 503")
	maxInFlight := fs.Int("max-inflight", "PAYSTREAM_MAX_INFLIGHT", webhook.DefaultMaxInFlight, "webhooks handled at once; more get a fast 503 (Cobo retries)")
	pprof := fs.Bool("pprof", "PAYSTREAM_PPROF", false, "serve the Go profiler under /debug/pprof/ on the admin listener")
	logLevel := fs.String("log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	natsFlags := cli.NATSAuthFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := cli.NewLogger(stdout, *logLevel, *logFormat, "ingest")
	if err != nil {
		return err
	}
	natsOpts, err := natsFlags.Options(ctx, log)
	if err != nil {
		return err
	}
	if _, err := trust.Verifier(); err != nil {
		return err
	}
	sync, err := ingest.ParseStoreSync(*storeSync)
	if err != nil {
		return fmt.Errorf("-store-sync: %w", err)
	}
	cfg := ingest.Config{
		Pprof:       *pprof,
		Listen:      *listen,
		AdminListen: *adminListen,
		NATSURL:     *natsURL,
		NATSOptions: natsOpts,

		NATSConnectWait: natsFlags.ConnectWait(),
		NATSListen:      *natsListen,
		DataDir:         *dataDir,
		CoboEnv:         trust.Env(),
		CoboPubKeys:     trust.PubKeys(),
		MaxSkew:         *maxSkew,
		StoreTimeout:    *storeTimeout,
		StoreSync:       sync,
		MaxInFlight:     *maxInFlight,
		Stream:          events.StreamConfig{Replicas: *replicas, MaxAge: *maxAge, DuplicateWindow: *dedup},
		Logger:          log,

		NATSListenTLSCert: *natsTLSCert,
		NATSListenTLSKey:  *natsTLSKey,
	}
	if *adminTokenFile != "" {
		if cfg.AdminToken, err = cli.ReadSecretFile(*adminTokenFile); err != nil {
			return fmt.Errorf("-admin-token-file: %w", err)
		}
	}
	return ingest.Run(ctx, cfg, 10*time.Second)
}
