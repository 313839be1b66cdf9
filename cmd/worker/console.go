package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/console"
	"github.com/paystream/paystream/internal/events"
)

// consoleConfig is `worker console`'s command line.
type consoleConfig struct {
	conn                         connFlags
	listen, tokenFile, ingestURL string
	trust                        *cli.CoboTrust
	noAlloc                      bool
	api                          apiFlags
	replicas                     int
	refresh                      time.Duration
	logLevel, logFormat          string
}

func newConsoleFlags(c *consoleConfig, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("worker console", getenv, out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: worker console -admin-token-file F -cobo-env dev|prod [flags]

Serves the operator console (README, "Console"): orders, their event
timelines and allocations, dead letters and redrive. It logs in as the
operator user, as replay and dlq do, and every page and API call needs the
admin token.

Flags:
`)
		fs.PrintDefaults()
	}
	c.conn.define(fs)
	fs.StringTo(&c.listen, "listen", "PAYSTREAM_CONSOLE_LISTEN", console.DefaultListen, "the console's HTTP address (keep it on loopback, or put TLS in front: the admin token travels in every request)")
	fs.StringTo(&c.tokenFile, "admin-token-file", "PAYSTREAM_ADMIN_TOKEN_FILE", "", "file holding the admin token every page and API call needs (required; the file ingest's -admin-token-file reads)")
	fs.StringTo(&c.ingestURL, "ingest-admin-url", "PAYSTREAM_CONSOLE_INGEST_ADMIN_URL", "", "ingest's admin listener, e.g. http://127.0.0.1:8081: its /metrics give the webhooks per minute (sent the admin token); empty: not shown")
	c.trust = cli.CoboTrustFlags(fs)
	fs.FlagSet.BoolVar(&c.noAlloc, "no-allocations", false, "the workers run without -rules: re-applying keeps order state only")
	c.api.define(fs, "the workers' allocation rules file, for re-applying an order's events", "with -rules: ")
	fs.IntTo(&c.replicas, "stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "replicas of the orders bucket, should a re-apply have to create it")
	fs.DurationTo(&c.refresh, "refresh", "PAYSTREAM_CONSOLE_REFRESH", console.DefaultRefreshEvery, "how often the overview reloads itself")
	fs.StringTo(&c.logLevel, "log-level", "PAYSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.StringTo(&c.logFormat, "log-format", "PAYSTREAM_LOG_FORMAT", "json", "json or console")
	return fs
}

// validate checks the rules between flags; each error names the flags.
func (c consoleConfig) validate() error {
	switch {
	case c.tokenFile == "":
		return errors.New("-admin-token-file is required: the console shows payments and redrives events, so it is never open")
	case c.noAlloc && c.api.rulesFile != "":
		return errors.New("-no-allocations contradicts -rules (or PAYSTREAM_RULES): the workers either run with rules or without")
	}
	return c.api.validate()
}

// runConsole is `worker console`: the operator console in the browser.
func runConsole(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c consoleConfig
	if err := parseArgs(newConsoleFlags(&c, getenv, stderr), args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	token, err := cli.ReadSecretFile(c.tokenFile)
	if err != nil {
		return fmt.Errorf("-admin-token-file: %w", err)
	}
	verifier, err := c.trust.Verifier()
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	cfg := console.Config{Listen: c.listen, Token: token, Verifier: verifier, NoAllocations: c.noAlloc, IngestAdminURL: c.ingestURL,
		Stream: events.StreamConfig{Replicas: c.replicas}, RefreshEvery: c.refresh}
	// As for replay -apply: batching does not matter, the workers'
	// batchers deliver what a re-apply plans.
	if cfg.Allocation, err = c.api.plan(); err != nil {
		return err
	}
	log, err := cli.NewLogger(stdout, c.logLevel, c.logFormat, "console")
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if !cfg.NoAllocations && cfg.Allocation == nil {
		log.Warn().Msg("re-applying is off: give the workers' -rules and Cobo API flags, or -no-allocations")
	}
	// Connection waits go to stderr like the other commands'; the
	// console's own lines to the logger.
	opts, err := c.conn.auth.Options(ctx, zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05"}).With().Timestamp().Logger())
	if err != nil {
		return err
	}
	cfg.NATSURL, cfg.NATSOptions, cfg.ConnectWait, cfg.Logger = c.conn.url, opts, c.conn.auth.ConnectWait(), log
	return c.conn.auth.Refused(console.Run(ctx, cfg))
}
