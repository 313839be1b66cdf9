// Command ingest receives Cobo webhooks, verifies them and stores them on
// NATS JetStream before answering.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/webhook"
)

// shutdownGrace is how long in-flight webhooks get to finish at a stop.
const shutdownGrace = 10 * time.Second

func main() {
	ctx, stop := cli.SignalContext()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitStatus(err, os.Stderr))
}

// errUsage means the command line is wrong as a whole (contradicting
// flags, an unknown command): exit status 2, as for a flag that does not
// parse.
var errUsage = cli.ErrBadFlag

// exitStatus reports err on stderr and returns the exit status
// (cli.ExitStatus).
func exitStatus(err error, stderr io.Writer) int { return cli.ExitStatus("ingest", err, stderr) }

// run parses the flags into a config and runs ingest until ctx ends. Logs
// go to stdout, help and flag errors to stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c config
	fs := newFlags(&c, getenv, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q; ingest takes flags only", errUsage, fs.Arg(0))
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log, err := cli.NewLogger(stdout, c.logLevel, c.logFormat, "ingest")
	if err != nil {
		return fmt.Errorf("%w: -log-level, -log-format: %w", errUsage, err)
	}
	cfg, err := c.config(ctx, log)
	if err != nil {
		return err
	}
	return ingest.Run(ctx, cfg, shutdownGrace)
}

// config is ingest's command line.
type config struct {
	listen, adminListen, adminTokenFile string
	natsURL, natsListen, dataDir        string
	natsTLSCert, natsTLSKey             string
	maxSkew, maxAge, dedup              time.Duration
	storeSync                           string
	groupCommit                         string
	storeTimeout                        time.Duration
	replicas, maxInFlight               int
	pprof                               bool
	logLevel, logFormat                 string
	trust                               *cli.CoboTrust
	nats                                *cli.NATSAuth
}

func newFlags(c *config, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("ingest", getenv, out)
	fs.StringTo(&c.listen, "listen", "PAYSTREAM_LISTEN", ingest.DefaultListen, "public webhook listener")
	fs.StringTo(&c.adminListen, "admin-listen", "PAYSTREAM_ADMIN_LISTEN", ingest.DefaultAdminListen, "admin listener: health, metrics, orders")
	fs.StringTo(&c.adminTokenFile, "admin-token-file", "PAYSTREAM_ADMIN_TOKEN_FILE", "", "file holding the admin Bearer token; empty disables admin auth")
	fs.StringTo(&c.natsURL, "nats-url", "PAYSTREAM_NATS_URL", "", "NATS server list; empty starts an embedded JetStream server")
	fs.StringTo(&c.natsListen, "nats-listen", "PAYSTREAM_NATS_LISTEN", ingest.DefaultNATSListen, "embedded server's client listener")
	fs.StringTo(&c.dataDir, "data-dir", "PAYSTREAM_DATA_DIR", ingest.DefaultDataDir, "embedded server's storage directory")
	fs.StringTo(&c.natsTLSCert, "nats-listen-tls-cert", "PAYSTREAM_NATS_LISTEN_TLS_CERT", "", "certificate of the embedded server's client listener (required when -nats-listen is not loopback)")
	fs.StringTo(&c.natsTLSKey, "nats-listen-tls-key", "PAYSTREAM_NATS_LISTEN_TLS_KEY", "", "key of -nats-listen-tls-cert")
	c.trust = cli.CoboTrustFlags(fs)
	fs.DurationTo(&c.maxSkew, "max-skew", "PAYSTREAM_MAX_SKEW", 0, "reject Biz-Timestamp outside now±skew; 0 disables")
	fs.IntTo(&c.replicas, "stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "JetStream replicas for streams and buckets (3 on a cluster)")
	fs.DurationTo(&c.maxAge, "stream-max-age", "PAYSTREAM_STREAM_MAX_AGE", events.DefaultMaxAge, "how long events are kept for replay")
	fs.DurationTo(&c.dedup, "dedup-window", "PAYSTREAM_DEDUP_WINDOW", events.DefaultDuplicateWindow, "how long event_ids are remembered for dedup")
	fs.StringTo(&c.storeSync, "store-sync", "PAYSTREAM_STORE_SYNC", "always", "embedded server: fsync every event before answering 200 (always), or only every <duration> (faster; an OS crash or power loss loses what was answered since)")
	fs.StringTo(&c.groupCommit, "group-commit", "PAYSTREAM_GROUP_COMMIT", ingest.GroupCommitAuto, "store concurrent webhooks as one atomic batch, one disk sync for many: auto (only on the embedded server with -store-sync always), on or off")
	fs.DurationTo(&c.storeTimeout, "store-timeout", "PAYSTREAM_STORE_TIMEOUT", 1500*time.Millisecond, "deadline to store an event before answering 503")
	fs.IntTo(&c.maxInFlight, "max-inflight", "PAYSTREAM_MAX_INFLIGHT", webhook.DefaultMaxInFlight, "webhooks handled at once; more get a fast 503 (Cobo retries)")
	fs.BoolTo(&c.pprof, "pprof", "PAYSTREAM_PPROF", false, "serve the Go profiler under /debug/pprof/ on the admin listener")
	fs.StringTo(&c.logLevel, "log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.StringTo(&c.logFormat, "log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	c.nats = cli.NATSAuthFlags(fs)
	return fs
}

// validate checks the rules between flags; each error names the flags.
// ingest.Start checks each value again, by its field.
func (c config) validate() error {
	switch {
	case (c.natsTLSCert == "") != (c.natsTLSKey == ""):
		return errors.New("-nats-listen-tls-cert and -nats-listen-tls-key go together")
	case c.natsURL == "" && c.natsTLSCert == "" && !httpapi.IsLoopback(c.natsListen):
		return fmt.Errorf("-nats-listen %s is not loopback: the embedded server then needs -nats-listen-tls-cert and -nats-listen-tls-key", c.natsListen)
	case c.pprof && c.adminTokenFile == "" && !httpapi.IsLoopback(c.adminListen):
		return fmt.Errorf("-pprof on -admin-listen %s, which is not loopback, needs -admin-token-file", c.adminListen)
	case c.maxAge > 0 && c.dedup > c.maxAge:
		return fmt.Errorf("-dedup-window (%s) must not be longer than -stream-max-age (%s)", c.dedup, c.maxAge)
	}
	switch c.groupCommit {
	case ingest.GroupCommitAuto, ingest.GroupCommitOn, ingest.GroupCommitOff:
	default:
		return fmt.Errorf("-group-commit: want auto, on or off, got %q", c.groupCommit)
	}
	if _, err := ingest.ParseStoreSync(c.storeSync); err != nil {
		return fmt.Errorf("-store-sync: %w", err)
	}
	// The keys are parsed here, once, so that a bad one is named by its
	// flag; ingest builds its verifier from the same flags.
	if _, err := c.trust.Verifier(); err != nil {
		return err
	}
	return nil
}

// config reads the files the flags name and returns ingest's
// configuration; each error names the flag.
func (c config) config(ctx context.Context, log zerolog.Logger) (ingest.Config, error) {
	sync, _ := ingest.ParseStoreSync(c.storeSync) // checked by validate
	cfg := ingest.Config{
		Pprof:             c.pprof,
		Listen:            c.listen,
		AdminListen:       c.adminListen,
		NATSURL:           c.natsURL,
		NATSConnectWait:   c.nats.ConnectWait(),
		NATSListen:        c.natsListen,
		NATSListenTLSCert: c.natsTLSCert,
		NATSListenTLSKey:  c.natsTLSKey,
		DataDir:           c.dataDir,
		CoboEnv:           c.trust.Env(),
		CoboPubKeys:       c.trust.PubKeys(),
		MaxSkew:           c.maxSkew,
		StoreTimeout:      c.storeTimeout,
		StoreSync:         sync,
		GroupCommit:       c.groupCommit,
		MaxInFlight:       c.maxInFlight,
		Stream:            events.StreamConfig{Replicas: c.replicas, MaxAge: c.maxAge, DuplicateWindow: c.dedup},
		Logger:            log,
	}
	var err error
	if c.adminTokenFile != "" {
		if cfg.AdminToken, err = cli.ReadSecretFile(c.adminTokenFile); err != nil {
			return cfg, fmt.Errorf("-admin-token-file: %w", err)
		}
	}
	if cfg.NATSOptions, err = c.nats.Options(ctx, log); err != nil {
		return cfg, err
	}
	return cfg, nil
}
