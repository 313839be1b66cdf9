package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/worker"
)

// workerConfig is the worker's command line.
type workerConfig struct {
	natsURL, metricsListen, metricsTokenFile string
	replicas, concurrency, maxDeliver        int
	ackWait, retention                       time.Duration
	pprof                                    bool
	logLevel, logFormat                      string

	api                                             apiFlags
	batchMax                                        int
	batchWait, orphanAfter, stuckAfter              time.Duration
	reconcileEvery, reconcileOverlap                time.Duration
	bitgoURL, bitgoEnterprise, bitgoToken, bitgoKey string
	bitgoCurrencies                                 string
	nats                                            *cli.NATSAuth
	trust                                           *cli.CoboTrust
}

// newWorkerFlags defines the worker's flags into c.
func newWorkerFlags(c *workerConfig, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("worker", getenv, out)
	fs.Usage = func() { usage(fs) }
	fs.StringTo(&c.natsURL, "nats-url", "PAYSTREAM_NATS_URL", worker.DefaultNATSURL, "NATS server list")
	fs.StringTo(&c.metricsListen, "metrics-listen", "PAYSTREAM_METRICS_LISTEN", worker.DefaultMetricsListen, "serves /metrics, /healthz and /readyz; - disables")
	fs.IntTo(&c.replicas, "stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "JetStream replicas for the DLQ stream and orders bucket")
	fs.DurationTo(&c.retention, "retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "how long settled orders, claims, batches and BitGo requests are kept after their last change; must be longer than the event stream's max age")
	fs.IntTo(&c.concurrency, "concurrency", "PAYSTREAM_CONCURRENCY", events.DefaultConcurrency, "events processed at once by this worker")
	fs.IntTo(&c.maxDeliver, "max-deliver", "PAYSTREAM_MAX_DELIVER", events.DefaultMaxDeliver, "deliveries before an event is dead-lettered")
	fs.DurationTo(&c.ackWait, "ack-wait", "PAYSTREAM_ACK_WAIT", events.DefaultAckWait, "redelivery delay after a worker dies mid-event (events being processed are marked in progress every third of it)")
	fs.BoolTo(&c.pprof, "pprof", "PAYSTREAM_PPROF", false, "serve the Go profiler under /debug/pprof/ on the metrics listener")
	fs.StringTo(&c.metricsTokenFile, "metrics-token-file", "PAYSTREAM_METRICS_TOKEN_FILE", "", "file holding the Bearer token the metrics listener requires (not of /healthz and /readyz); empty: none")
	fs.StringTo(&c.logLevel, "log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.StringTo(&c.logFormat, "log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	c.api.define(fs, "allocation rules file (JSON); empty keeps order state only", "")
	fs.IntTo(&c.batchMax, "batch-max", "PAYSTREAM_BATCH_MAX", allocation.DefaultBatchMax, "items per Cobo batch allocation at most")
	fs.DurationTo(&c.batchWait, "batch-wait", "PAYSTREAM_BATCH_WAIT", allocation.DefaultBatchWait, "how long a batch waits to fill")
	fs.DurationTo(&c.orphanAfter, "orphan-after", "PAYSTREAM_ORPHAN_AFTER", allocation.DefaultOrphanAfter, "publish again the intents of allocation items planned longer than this with no sender holding them")
	fs.DurationTo(&c.stuckAfter, "alloc-stuck-after", "PAYSTREAM_ALLOC_STUCK_AFTER", allocation.DefaultStuckAfter, "how long a Cobo allocation item may stay planned or pending in a batch before it is marked stuck, logged and counted")
	fs.DurationTo(&c.reconcileEvery, "reconcile-every", "PAYSTREAM_RECONCILE_EVERY", reconcile.DefaultEvery, "with -rules: reconcile with Cobo's order list this often (fleet-wide); 0 turns it off")
	fs.DurationTo(&c.reconcileOverlap, "reconcile-overlap", "PAYSTREAM_RECONCILE_OVERLAP", reconcile.DefaultOverlap, "how far before the reconciled point each pass looks again")
	fs.StringTo(&c.bitgoURL, "bitgo-url", "PAYSTREAM_BITGO_URL", bitgo.TestBaseURL, "BitGo API base URL, without a path")
	fs.StringTo(&c.bitgoEnterprise, "bitgo-enterprise-id", "PAYSTREAM_BITGO_ENTERPRISE_ID", "", "BitGo enterprise owning the partner connections")
	fs.StringTo(&c.bitgoToken, "bitgo-token-file", "PAYSTREAM_BITGO_TOKEN_FILE", "", "file holding the BitGo access token")
	fs.StringTo(&c.bitgoKey, "bitgo-signing-key-file", "PAYSTREAM_BITGO_SIGNING_KEY_FILE", "", "file holding the Go Account key signing allocation payloads (xprv or 32-byte hex)")
	fs.StringTo(&c.bitgoCurrencies, "bitgo-currencies", "PAYSTREAM_BITGO_CURRENCIES", "", "Cobo token id to BitGo currency and decimals, TOKEN=NAME:DECIMALS comma-separated; empty uses the built-in mainnet table")
	c.nats = cli.NATSAuthFlags(fs)
	c.trust = cli.CoboTrustFlags(fs)
	return fs
}

// validate checks the rules between flags; each error names the flags.
func (c workerConfig) validate() error {
	switch {
	case c.reconcileEvery < 0:
		return fmt.Errorf("-reconcile-every must not be negative (0 turns reconciliation off), got %s", c.reconcileEvery)
	case c.reconcileOverlap < 0:
		return fmt.Errorf("-reconcile-overlap must not be negative, got %s", c.reconcileOverlap)
	case c.pprof && c.metricsTokenFile == "" && c.metricsListen != "-" && !httpapi.IsLoopback(c.metricsListen):
		return fmt.Errorf("-pprof on -metrics-listen %s, which is not loopback, needs -metrics-token-file", c.metricsListen)
	}
	return c.api.validate()
}

// config reads the files the flags name (secrets, rules) and returns the
// worker's configuration; each error names the flag. The values are
// checked where they are used: by the library constructors worker.Start
// calls before it connects anywhere (see workerFlagsOf).
func (c workerConfig) config(ctx context.Context, log zerolog.Logger) (worker.Config, error) {
	cfg := worker.Config{
		NATSURL:       c.natsURL,
		ConnectWait:   c.nats.ConnectWait(),
		MetricsListen: c.metricsListen,
		Pprof:         c.pprof,
		Stream:        events.StreamConfig{Replicas: c.replicas, Retention: events.Retention{Keep: c.retention}},
		Consumer:      events.ConsumerConfig{Concurrency: c.concurrency, MaxDeliver: c.maxDeliver, AckWait: c.ackWait},
		Logger:        log,
	}
	var err error
	if cfg.Verifier, err = c.trust.Verifier(); err != nil {
		return cfg, fmt.Errorf("%w: %w", errUsage, err)
	}
	if c.metricsTokenFile != "" {
		if cfg.MetricsToken, err = cli.ReadSecretFile(c.metricsTokenFile); err != nil {
			return cfg, fmt.Errorf("-metrics-token-file: %w", err)
		}
	}
	if cfg.Allocation, err = c.allocation(); err != nil {
		return cfg, err
	}
	// Last: it may wait for the password file ingest writes.
	if cfg.NATSOptions, err = c.nats.Options(ctx, log); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// allocation is the allocation side; nil without -rules, when the worker
// keeps order state only.
func (c workerConfig) allocation() (*worker.AllocationConfig, error) {
	plan, err := c.api.plan()
	if plan == nil || err != nil {
		return nil, err
	}
	a := &worker.AllocationConfig{
		Rules:     plan.Rules,
		Cobo:      plan.Cobo,
		Batcher:   allocation.BatcherConfig{BatchMax: c.batchMax, BatchWait: c.batchWait, StuckAfter: c.stuckAfter},
		Sweeper:   allocation.SweeperConfig{OrphanAfter: c.orphanAfter},
		Reconcile: reconcile.Config{Every: c.reconcileEvery, Off: c.reconcileEvery == 0, Overlap: c.reconcileOverlap},
	}
	if a.Rules.UsesBitGo() || c.bitgoToken != "" {
		if a.BitGo, err = c.bitgo(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// bitgo reads the BitGo credentials. bitgo.New, in worker.Start, checks
// the rest.
func (c workerConfig) bitgo() (*bitgo.Config, error) {
	if c.bitgoEnterprise == "" || c.bitgoToken == "" || c.bitgoKey == "" {
		return nil, errors.New("the rules route items to bitgo: destinations; set -bitgo-enterprise-id, -bitgo-token-file and -bitgo-signing-key-file")
	}
	token, err := cli.ReadSecretFile(c.bitgoToken)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-token-file: %w", err)
	}
	raw, err := cli.ReadSecretFile(c.bitgoKey)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
	}
	key, err := bitgo.ParseSigningKey(raw)
	if err != nil {
		return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
	}
	cur := bitgo.DefaultCurrencies()
	if c.bitgoCurrencies != "" {
		if cur, err = bitgo.ParseCurrencies(c.bitgoCurrencies); err != nil {
			return nil, fmt.Errorf("-bitgo-currencies: %w", err)
		}
	}
	return &bitgo.Config{BaseURL: c.bitgoURL, EnterpriseID: c.bitgoEnterprise, AccessToken: token, SigningKey: key, Currencies: cur}, nil
}

// workerFlagsOf names the flags behind each part of worker.Config and
// apply.Config, for the errors they report by part (ConfigError.Field; one
// type, worker.ConfigError being apply.ConfigError).
var workerFlagsOf = map[string]string{
	"Verifier":             "-cobo-env, -cobo-pubkey",
	"Pprof":                "-pprof, -metrics-listen, -metrics-token-file",
	"Stream":               "-stream-replicas, -retention",
	"Consumer":             "-concurrency, -max-deliver, -ack-wait",
	"Allocation.Rules":     "-rules",
	"Allocation.Cobo":      "-cobo-api-url, -cobo-api-secret-file",
	"Allocation.Batcher":   "-batch-max, -batch-wait, -alloc-stuck-after",
	"Allocation.Sweeper":   "-orphan-after",
	"Allocation.Reconcile": "-reconcile-every, -reconcile-overlap",
	"Allocation.BitGo":     "-bitgo-url, -bitgo-enterprise-id, -bitgo-token-file, -bitgo-signing-key-file, -bitgo-currencies",
}

// nameFlags prefixes a configuration error with the flags that set the
// part at fault; other errors are returned as they are.
func nameFlags(err error) error {
	var ce *worker.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	if flags, ok := workerFlagsOf[ce.Field]; ok {
		return fmt.Errorf("%s: %w", flags, err)
	}
	return err
}

// apiFlags are the workers' rules and Cobo API credentials, which every
// command that plans allocations takes.
type apiFlags struct {
	rulesFile, url, secretFile string
}

// define defines -rules, -cobo-api-url and -cobo-api-secret-file; when
// names the condition under which the latter two apply, e.g. "with
// -apply and -rules: ".
func (f *apiFlags) define(fs *cli.Flags, rulesUsage, when string) {
	fs.StringTo(&f.rulesFile, "rules", "PAYSTREAM_RULES", "", rulesUsage)
	fs.StringTo(&f.url, "cobo-api-url", "PAYSTREAM_COBO_API_URL", cobo.DevAPIURL, when+"Cobo API base URL, including /v2")
	fs.StringTo(&f.secretFile, "cobo-api-secret-file", "PAYSTREAM_COBO_API_SECRET_FILE", "", when+"file holding the Cobo API secret (hex Ed25519 seed)")
}

func (f apiFlags) validate() error {
	if f.rulesFile != "" && f.secretFile == "" {
		return errors.New("-rules needs -cobo-api-secret-file")
	}
	return nil
}

// plan loads the rules and the Cobo API secret; nil without -rules. The
// Cobo client is built, and its URL checked, where it is used.
func (f apiFlags) plan() (*apply.Allocation, error) {
	if f.rulesFile == "" {
		return nil, nil
	}
	rules, err := allocation.LoadRules(f.rulesFile)
	if err != nil {
		return nil, fmt.Errorf("-rules: %w", err)
	}
	secret, err := cli.ReadSecretFile(f.secretFile)
	if err != nil {
		return nil, fmt.Errorf("-cobo-api-secret-file: %w", err)
	}
	signer, err := cobo.NewAPISigner(secret)
	if err != nil {
		return nil, fmt.Errorf("-cobo-api-secret-file: %w", err)
	}
	return &apply.Allocation{Rules: rules, Cobo: cobo.ClientConfig{BaseURL: f.url, Signer: signer}}, nil
}
