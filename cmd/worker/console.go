package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/console"
	"github.com/paystream/paystream/internal/events"
)

// runConsole is `worker console`: the operator console in the browser
// (README, "Console"). It logs in as the operator user, as replay and dlq
// do, and serves behind the admin token:
//
//	worker console -admin-token-file F -cobo-env dev|prod [-listen 127.0.0.1:8082]
//	  [-rules F -cobo-api-secret-file F | -no-allocations] [-ingest-admin-url URL] ...
func runConsole(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("worker console", getenv, stdout)
	conn := newNATSFlags(fs)
	listen := fs.String("listen", "PAYSTREAM_CONSOLE_LISTEN", console.DefaultListen, "the console's HTTP address (keep it on loopback, or put TLS in front: the admin token travels in every request)")
	tokenFile := fs.String("admin-token-file", "PAYSTREAM_ADMIN_TOKEN_FILE", "", "file holding the admin token every page and API call needs (required; the file ingest's -admin-token-file reads)")
	ingestURL := fs.String("ingest-admin-url", "PAYSTREAM_CONSOLE_INGEST_ADMIN_URL", "", "ingest's admin listener, e.g. http://127.0.0.1:8081: its /metrics give the webhooks per minute (sent the admin token); empty: not shown")
	trust := cli.CoboTrustFlags(fs)
	noAlloc := fs.FlagSet.Bool("no-allocations", false, "the workers run without -rules: re-applying keeps order state only")
	rulesFile := fs.String("rules", "PAYSTREAM_RULES", "", "the workers' allocation rules file, for re-applying an order's events")
	coboURL := fs.String("cobo-api-url", "PAYSTREAM_COBO_API_URL", cobo.DevAPIURL, "with -rules: Cobo API base URL, including /v2")
	coboSecretFile := fs.String("cobo-api-secret-file", "PAYSTREAM_COBO_API_SECRET_FILE", "", "with -rules: file holding the Cobo API secret (hex Ed25519 seed)")
	replicas := fs.Int("stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "replicas of the orders bucket, should a re-apply have to create it")
	refresh := fs.Duration("refresh", "PAYSTREAM_CONSOLE_REFRESH", console.DefaultRefreshEvery, "how often the overview reloads itself")
	logLevel := fs.String("log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("worker console: unexpected argument %q", fs.Arg(0))
	}
	if *tokenFile == "" {
		return errors.New("worker console: -admin-token-file is required: the console shows payments and redrives events, so it is never open")
	}
	token, err := cli.ReadSecretFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("-admin-token-file: %w", err)
	}
	verifier, err := trust.Verifier()
	if err != nil {
		return err
	}
	cfg := console.Config{Listen: *listen, Token: token, Verifier: verifier, NoAllocations: *noAlloc, IngestAdminURL: *ingestURL,
		Stream: events.StreamConfig{Replicas: *replicas}, RefreshEvery: *refresh}
	switch {
	case *noAlloc && *rulesFile != "":
		return errors.New("-no-allocations contradicts -rules (or PAYSTREAM_RULES): the workers either run with rules or without")
	case *rulesFile != "":
		// As for replay -apply: batching does not matter, the workers'
		// batchers deliver what a re-apply plans.
		if cfg.Allocation, err = allocationConfig(*rulesFile, *coboSecretFile, *coboURL, allocation.DefaultBatchMax, allocation.DefaultBatchWait); err != nil {
			return err
		}
	}
	log, err := cli.NewLogger(stdout, *logLevel, *logFormat, "console")
	if err != nil {
		return err
	}
	if !cfg.NoAllocations && cfg.Allocation == nil {
		log.Warn().Msg("re-applying is off: give the workers' -rules and Cobo API flags, or -no-allocations")
	}
	// Connection waits go to stderr like the other subcommands'; the
	// console's own lines to the logger.
	opts, err := conn.auth.Options(ctx, zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05"}).With().Timestamp().Logger())
	if err != nil {
		return err
	}
	cfg.NATSURL, cfg.NATSOptions, cfg.ConnectWait, cfg.Logger = *conn.url, opts, conn.auth.ConnectWait(), log
	return conn.auth.Refused(console.Run(ctx, cfg))
}
