// Command worker consumes stored webhooks and keeps every pay-in order's
// state. Run any number of replicas against the same NATS.
//
// Its operator subcommands read and repair the stored events:
//
//	worker replay [-order ID] [-type T] [-since T] [-until T] [-from-seq N] [-verify] [-apply] ...
//	worker dlq list [-order ID] [-type T] ...
//	worker dlq redrive -seq N | -all ...
//	worker reconcile [-since T] [-dry-run] -rules F -cobo-api-secret-file F ...
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
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
	// A subcommand is the first argument; flags start with "-", so plain
	// `worker [flags]` is unaffected.
	if len(args) > 0 {
		switch args[0] {
		case "replay":
			return runReplay(ctx, args[1:], getenv, stdout)
		case "dlq":
			return runDLQ(ctx, args[1:], getenv, stdout)
		case "reconcile":
			return runReconcile(ctx, args[1:], getenv, stdout)
		}
	}
	fs := cli.NewFlags("worker", getenv, stdout)
	natsURL := fs.String("nats-url", "PAYSTREAM_NATS_URL", worker.DefaultNATSURL, "NATS server list")
	metricsListen := fs.String("metrics-listen", "PAYSTREAM_METRICS_LISTEN", worker.DefaultMetricsListen, "serves /metrics, /healthz and /readyz; - disables")
	replicas := fs.Int("stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "JetStream replicas for the DLQ stream and orders bucket")
	retention := fs.Duration("retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "how long settled orders, claims, batches and BitGo requests are kept after their last change; must be longer than the event stream's max age")
	concurrency := fs.Int("concurrency", "PAYSTREAM_CONCURRENCY", events.DefaultConcurrency, "events processed at once by this worker")
	maxDeliver := fs.Int("max-deliver", "PAYSTREAM_MAX_DELIVER", events.DefaultMaxDeliver, "deliveries before an event is dead-lettered")
	ackWait := fs.Duration("ack-wait", "PAYSTREAM_ACK_WAIT", events.DefaultAckWait, "redelivery delay after a worker dies mid-event")
	pprof := fs.Bool("pprof", "PAYSTREAM_PPROF", false, "serve the Go profiler under /debug/pprof/ on the metrics listener")
	metricsTokenFile := fs.String("metrics-token-file", "PAYSTREAM_METRICS_TOKEN_FILE", "", "file holding the Bearer token the metrics listener requires (not of /healthz and /readyz); empty: none")
	logLevel := fs.String("log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	coboURL := fs.String("cobo-api-url", "PAYSTREAM_COBO_API_URL", cobo.DevAPIURL, "Cobo API base URL, including /v2")
	coboSecretFile := fs.String("cobo-api-secret-file", "PAYSTREAM_COBO_API_SECRET_FILE", "", "file holding the Cobo API secret (hex Ed25519 seed)")
	rulesFile := fs.String("rules", "PAYSTREAM_RULES", "", "allocation rules file (JSON); empty keeps order state only")
	batchMax := fs.Int("batch-max", "PAYSTREAM_BATCH_MAX", allocation.DefaultBatchMax, "items per Cobo batch allocation at most")
	batchWait := fs.Duration("batch-wait", "PAYSTREAM_BATCH_WAIT", allocation.DefaultBatchWait, "how long a batch waits to fill")
	orphanAfter := fs.Duration("orphan-after", "PAYSTREAM_ORPHAN_AFTER", allocation.DefaultOrphanAfter, "publish again the intents of allocation items planned longer than this with no sender holding them")
	stuckAfter := fs.Duration("alloc-stuck-after", "PAYSTREAM_ALLOC_STUCK_AFTER", allocation.DefaultStuckAfter, "how long a Cobo allocation item may stay planned or pending in a batch before it is marked stuck, logged and counted")
	reconcileEvery := fs.Duration("reconcile-every", "PAYSTREAM_RECONCILE_EVERY", reconcile.DefaultEvery, "with -rules: reconcile with Cobo's order list this often (fleet-wide); 0 turns it off")
	reconcileOverlap := fs.Duration("reconcile-overlap", "PAYSTREAM_RECONCILE_OVERLAP", reconcile.DefaultOverlap, "how far before the reconciled point each pass looks again")
	bg := bitgoFlags{
		url:        fs.String("bitgo-url", "PAYSTREAM_BITGO_URL", bitgo.TestBaseURL, "BitGo API base URL, without a path"),
		enterprise: fs.String("bitgo-enterprise-id", "PAYSTREAM_BITGO_ENTERPRISE_ID", "", "BitGo enterprise owning the partner connections"),
		tokenFile:  fs.String("bitgo-token-file", "PAYSTREAM_BITGO_TOKEN_FILE", "", "file holding the BitGo access token"),
		keyFile:    fs.String("bitgo-signing-key-file", "PAYSTREAM_BITGO_SIGNING_KEY_FILE", "", "file holding the Go Account key signing allocation payloads (xprv or 32-byte hex)"),
		currencies: fs.String("bitgo-currencies", "PAYSTREAM_BITGO_CURRENCIES", "", "Cobo token id to BitGo currency and decimals, TOKEN=NAME:DECIMALS comma-separated; empty uses the built-in mainnet table"),
	}
	natsFlags := cli.NATSAuthFlags(fs)
	trust := cli.CoboTrustFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	verifier, err := trust.Verifier()
	if err != nil {
		return err
	}
	var metricsToken string
	if *metricsTokenFile != "" {
		if metricsToken, err = cli.ReadSecretFile(*metricsTokenFile); err != nil {
			return fmt.Errorf("-metrics-token-file: %w", err)
		}
	}
	log, err := cli.NewLogger(stdout, *logLevel, *logFormat, "worker")
	if err != nil {
		return err
	}
	natsOpts, err := natsFlags.Options(ctx, log)
	if err != nil {
		return err
	}
	alloc, err := allocationConfig(*rulesFile, *coboSecretFile, *coboURL, *batchMax, *batchWait)
	if err != nil {
		return err
	}
	rcfg, err := reconcileConfig(*reconcileEvery, *reconcileOverlap)
	if err != nil {
		return err
	}
	if alloc != nil {
		alloc.Sweeper = allocation.SweeperConfig{OrphanAfter: *orphanAfter}
		alloc.Batcher.StuckAfter = *stuckAfter
		alloc.Reconcile = rcfg
	}
	if alloc != nil && (alloc.Rules.UsesBitGo() || *bg.tokenFile != "") {
		if alloc.BitGo, err = bg.config(); err != nil {
			return err
		}
	}
	return natsFlags.Refused(worker.Run(ctx, worker.Config{
		Verifier:      verifier,
		Allocation:    alloc,
		NATSURL:       *natsURL,
		NATSOptions:   natsOpts,
		ConnectWait:   natsFlags.ConnectWait(),
		MetricsListen: *metricsListen,
		MetricsToken:  metricsToken,
		Pprof:         *pprof,
		Stream:        events.StreamConfig{Replicas: *replicas, Retention: events.Retention{Keep: *retention}},
		Consumer:      events.ConsumerConfig{Concurrency: *concurrency, MaxDeliver: *maxDeliver, AckWait: *ackWait},
		Logger:        log,
	}))
}

// bitgoFlags are the BitGo client's flags.
type bitgoFlags struct {
	url, enterprise, tokenFile, keyFile, currencies *string
}

// config builds and checks the BitGo client configuration.
func (f bitgoFlags) config() (*bitgo.Config, error) {
	if *f.enterprise == "" || *f.tokenFile == "" || *f.keyFile == "" {
		return nil, fmt.Errorf("the rules route items to bitgo: destinations; set -bitgo-enterprise-id, -bitgo-token-file and -bitgo-signing-key-file")
	}
	token, err := cli.ReadSecretFile(*f.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-token-file: %w", err)
	}
	raw, err := cli.ReadSecretFile(*f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
	}
	key, err := bitgo.ParseSigningKey(raw)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
	}
	cur := bitgo.DefaultCurrencies()
	if *f.currencies != "" {
		if cur, err = bitgo.ParseCurrencies(*f.currencies); err != nil {
			return nil, fmt.Errorf("-bitgo-currencies: %w", err)
		}
	}
	cfg := &bitgo.Config{BaseURL: *f.url, EnterpriseID: *f.enterprise, AccessToken: token, SigningKey: key, Currencies: cur}
	if _, err := bitgo.New(*cfg); err != nil {
		return nil, fmt.Errorf("-bitgo-*: %w", err)
	}
	return cfg, nil
}

// allocationConfig loads the rules and the Cobo client; without -rules the
// worker keeps order state only.
func allocationConfig(rulesFile, secretFile, apiURL string, batchMax int, batchWait time.Duration) (*worker.AllocationConfig, error) {
	if rulesFile == "" {
		return nil, nil
	}
	rules, err := allocation.LoadRules(rulesFile)
	if err != nil {
		return nil, fmt.Errorf("-rules: %w", err)
	}
	if secretFile == "" {
		return nil, fmt.Errorf("-rules needs -cobo-api-secret-file")
	}
	secret, err := cli.ReadSecretFile(secretFile)
	if err != nil {
		return nil, fmt.Errorf("-cobo-api-secret-file: %w", err)
	}
	signer, err := cobo.NewAPISigner(secret)
	if err != nil {
		return nil, fmt.Errorf("-cobo-api-secret-file: %w", err)
	}
	ccfg := cobo.ClientConfig{BaseURL: apiURL, Signer: signer}
	if _, err := cobo.NewClient(ccfg); err != nil {
		return nil, fmt.Errorf("-cobo-api-url: %w", err)
	}
	return &worker.AllocationConfig{
		Rules:   rules,
		Cobo:    ccfg,
		Batcher: allocation.BatcherConfig{BatchMax: batchMax, BatchWait: batchWait},
	}, nil
}
