package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/worker"
)

// selectionFlags are the flags choosing stored events.
type selectionFlags struct {
	order, typ, since, until string
	fromSeq                  uint64
}

func (f *selectionFlags) define(fs *cli.Flags, seqUsage string) {
	fs.FlagSet.StringVar(&f.order, "order", "", "only this order's events")
	fs.FlagSet.StringVar(&f.typ, "type", "", "only events of this type, e.g. payment.transaction.late")
	fs.FlagSet.StringVar(&f.since, "since", "", "only events stored at or after this RFC 3339 time, or this long ago (e.g. 2h)")
	fs.FlagSet.StringVar(&f.until, "until", "", "only events stored at or before this RFC 3339 time, or this long ago")
	fs.FlagSet.Uint64Var(&f.fromSeq, "from-seq", 0, seqUsage)
}

// selection reads the flags as of now; each error names the flag.
func (f selectionFlags) selection(now time.Time) (replay.Selection, error) {
	s := replay.Selection{OrderID: f.order, Type: f.typ, FromSeq: f.fromSeq}
	var err error
	if f.since != "" {
		if s.Since, err = replay.ParseTime(f.since, now); err != nil {
			return s, fmt.Errorf("-since: %w", err)
		}
	}
	if f.until != "" {
		if s.Until, err = replay.ParseTime(f.until, now); err != nil {
			return s, fmt.Errorf("-until: %w", err)
		}
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("-since/-until: %w", err)
	}
	return s, nil
}

// connFlags are the connection flags every operator command takes.
type connFlags struct {
	url  string
	auth *cli.NATSAuth
}

func (f *connFlags) define(fs *cli.Flags) {
	fs.StringTo(&f.url, "nats-url", "PAYSTREAM_NATS_URL", worker.DefaultNATSURL, "NATS server list")
	f.auth = cli.NATSAuthFlags(fs)
}

// connect opens a connection for one command; the caller closes it. What
// it waits for goes to stderr: stdout carries the JSON lines.
func (f connFlags) connect(ctx context.Context, name string, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05"}).With().Timestamp().Logger()
	opts, err := f.auth.Options(ctx, log)
	if err != nil {
		return nil, nil, err
	}
	nc, err := natsconn.Connect(ctx, natsconn.Options{URL: f.url, Name: name, Logger: log, Extra: opts, ConnectWait: f.auth.ConnectWait()})
	if err != nil {
		return nil, nil, f.auth.Refused(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// replayConfig is `worker replay`'s command line.
type replayConfig struct {
	conn                   connFlags
	sel                    selectionFlags
	verify, apply, noAlloc bool
	trust                  *cli.CoboTrust
	api                    apiFlags
	replicas               int
	retention              time.Duration
}

func newReplayFlags(c *replayConfig, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("worker replay", getenv, out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: worker replay [flags]

Prints the selected stored events, oldest first, as JSON lines on stdout:
read-only unless -apply. A note on stderr says when nothing was selected.

Flags:
`)
		fs.PrintDefaults()
	}
	c.conn.define(fs)
	c.sel.define(fs, "start at this event stream sequence")
	fs.FlagSet.BoolVar(&c.verify, "verify", false, "re-check each event's stored signature against the trusted keys (-cobo-env or -cobo-pubkey); exit status 1 if any fails")
	c.trust = cli.CoboTrustFlags(fs)
	fs.FlagSet.BoolVar(&c.apply, "apply", false, "re-apply the events through the workers' own path and print what changed; needs the workers' -rules, or -no-allocations")
	fs.FlagSet.BoolVar(&c.noAlloc, "no-allocations", false, "with -apply: the workers run without -rules, so apply order state only")
	c.api.define(fs, "with -apply: the workers' allocation rules file", "with -apply and -rules: ")
	fs.IntTo(&c.replicas, "stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "with -apply: replicas of the orders bucket, should it have to be created")
	fs.DurationTo(&c.retention, "retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "with -apply: the workers' -retention (settled orders written expire after it)")
	return fs
}

// validate checks the rules between flags; each error names the flags.
func (c replayConfig) validate() error {
	if !c.apply {
		return nil
	}
	switch {
	case c.noAlloc && c.api.rulesFile != "":
		return errors.New("-no-allocations contradicts -rules (or PAYSTREAM_RULES): the workers either run with rules or without")
	case !c.noAlloc && c.api.rulesFile == "":
		return errors.New("-apply needs the workers' -rules (and Cobo API flags), or -no-allocations if they run without rules: applying without the planner could complete an order without planning its splits")
	}
	return c.api.validate()
}

// runReplay is `worker replay`: it prints the selected events as JSON
// lines, read-only unless -apply.
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c replayConfig
	if err := parseArgs(newReplayFlags(&c, getenv, stderr), args); err != nil {
		return err
	}
	s, err := c.sel.selection(time.Now())
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	cfg := replay.Config{Select: s, Apply: c.apply, NoAllocations: c.noAlloc, Stream: events.StreamConfig{Replicas: c.replicas, Retention: events.Retention{Keep: c.retention}}, Out: stdout}
	if c.apply {
		// The workers' batching flags do not matter here: their batchers
		// deliver what -apply plans.
		if cfg.Allocation, err = c.api.plan(); err != nil {
			return err
		}
	}
	// -apply verifies as the workers do, so it needs the keys too.
	if c.verify || c.apply {
		if cfg.Verifier, err = c.trust.Verifier(); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
	}
	nc, js, err := c.conn.connect(ctx, "paystream-replay", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg.JetStream = js
	sum, err := replay.Replay(ctx, cfg)
	if sum.Events == 0 && err == nil {
		fmt.Fprintln(stderr, "worker replay: no stored event matches the selection")
	}
	return nameFlags(err)
}

// dlqConfig is `worker dlq list` and `worker dlq redrive`'s command line.
type dlqConfig struct {
	sub  string
	conn connFlags
	sel  selectionFlags
	seq  uint64
	all  bool
}

const dlqUsage = `Usage:
  worker dlq list [flags]                    print dead letters as JSON lines
  worker dlq redrive -seq N | -all [flags]   send dead letters back to the event stream

Run worker dlq list -h or worker dlq redrive -h for their flags.
`

func newDLQFlags(c *dlqConfig, getenv func(string) string, out io.Writer) *cli.Flags {
	fs := cli.NewFlags("worker dlq "+c.sub, getenv, out)
	fs.Usage = func() {
		if c.sub == "list" {
			fmt.Fprint(fs.Output(), "Usage: worker dlq list [flags]\n\nPrints the selected dead letters, oldest first, as JSON lines on stdout.\nA note on stderr says when there are none.\n\nFlags:\n")
		} else {
			fmt.Fprint(fs.Output(), "Usage: worker dlq redrive -seq N | -all [flags]\n\nSends dead letters back to the event stream, printing one JSON line each.\n\nFlags:\n")
		}
		fs.PrintDefaults()
	}
	c.conn.define(fs)
	c.sel.define(fs, "start at this dead-letter stream sequence")
	if c.sub == "redrive" {
		fs.FlagSet.Uint64Var(&c.seq, "seq", 0, "send back the dead letter with this dlq_seq (see worker dlq list)")
		fs.FlagSet.BoolVar(&c.all, "all", false, "send back every dead letter the selection flags choose")
	}
	return fs
}

// validate checks the rules between flags; each error names the flags.
func (c dlqConfig) validate() error {
	if c.sub != "redrive" {
		return nil
	}
	switch {
	case c.seq == 0 && !c.all:
		return errors.New("worker dlq redrive: give -seq N or -all")
	case c.seq != 0 && c.all:
		return errors.New("worker dlq redrive: -seq and -all exclude each other")
	case c.seq != 0 && c.sel != (selectionFlags{}):
		return errors.New("worker dlq redrive: -order, -type, -since, -until and -from-seq go with -all")
	}
	return nil
}

// runDLQ is `worker dlq list` and `worker dlq redrive`.
func runDLQ(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return fmt.Errorf("%w: worker dlq needs list or redrive", errUsage)
	}
	c := dlqConfig{sub: args[0]}
	switch c.sub {
	case "list", "redrive":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, dlqUsage)
		return flag.ErrHelp
	default:
		fmt.Fprint(stderr, dlqUsage)
		return fmt.Errorf("%w: unknown dlq command %q; worker dlq list or worker dlq redrive", errUsage, c.sub)
	}
	if err := parseArgs(newDLQFlags(&c, getenv, stderr), args[1:]); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	s, err := c.sel.selection(time.Now())
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	cfg := replay.DLQConfig{Select: s, Seq: c.seq, All: c.all, Out: stdout}
	nc, js, err := c.conn.connect(ctx, "paystream-dlq", stderr)
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg.JetStream = js
	if c.sub == "list" {
		n, err := replay.ListDeadLetters(ctx, cfg)
		if n == 0 && err == nil {
			fmt.Fprintln(stderr, "worker dlq list: no dead letter matches the selection")
		}
		return err
	}
	n, err := replay.Redrive(ctx, cfg)
	if n == 0 && err == nil {
		fmt.Fprintln(stderr, "worker dlq redrive: no dead letter matches the selection; nothing sent back")
	}
	return err
}
