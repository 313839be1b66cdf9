package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/worker"
)

// selectionFlags are the flags choosing stored events.
type selectionFlags struct {
	order, typ, since, until *string
	fromSeq                  *uint64
}

func newSelectionFlags(fs *cli.Flags, seqUsage string) selectionFlags {
	return selectionFlags{
		order:   fs.FlagSet.String("order", "", "only this order's events"),
		typ:     fs.FlagSet.String("type", "", "only events of this type, e.g. payment.transaction.late"),
		since:   fs.FlagSet.String("since", "", "only events stored at or after this RFC 3339 time, or this long ago (e.g. 2h)"),
		until:   fs.FlagSet.String("until", "", "only events stored at or before this RFC 3339 time, or this long ago"),
		fromSeq: fs.FlagSet.Uint64("from-seq", 0, seqUsage),
	}
}

func (f selectionFlags) selection(now time.Time) (replay.Selection, error) {
	s := replay.Selection{OrderID: *f.order, Type: *f.typ, FromSeq: *f.fromSeq}
	var err error
	if *f.since != "" {
		if s.Since, err = replay.ParseTime(*f.since, now); err != nil {
			return s, fmt.Errorf("-since: %w", err)
		}
	}
	if *f.until != "" {
		if s.Until, err = replay.ParseTime(*f.until, now); err != nil {
			return s, fmt.Errorf("-until: %w", err)
		}
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("-since/-until: %w", err)
	}
	return s, nil
}

// natsFlags are the connection flags every subcommand takes.
type natsFlags struct {
	url  *string
	auth *cli.NATSAuth
}

func newNATSFlags(fs *cli.Flags) natsFlags {
	return natsFlags{
		url:  fs.String("nats-url", "PAYSTREAM_NATS_URL", worker.DefaultNATSURL, "NATS server list"),
		auth: cli.NATSAuthFlags(fs),
	}
}

// connect opens a connection for one command; the caller closes it.
func (f natsFlags) connect(ctx context.Context, name string) (*nats.Conn, jetstream.JetStream, error) {
	// What it waits for goes to stderr: stdout carries the JSON lines.
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05"}).With().Timestamp().Logger()
	opts, err := f.auth.Options(ctx, log)
	if err != nil {
		return nil, nil, err
	}
	nc, err := natsconn.Connect(ctx, natsconn.Options{URL: *f.url, Name: name, Logger: log, Extra: opts, ConnectWait: f.auth.ConnectWait()})
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

// runReplay is `worker replay`: it prints the selected events as JSON
// lines, read-only unless -apply.
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("worker replay", getenv, stdout)
	conn := newNATSFlags(fs)
	sel := newSelectionFlags(fs, "start at this event stream sequence")
	verify := fs.FlagSet.Bool("verify", false, "re-check each event's stored signature against the trusted keys (-cobo-env or -cobo-pubkey); exit status 1 if any fails")
	trust := cli.CoboTrustFlags(fs)
	apply := fs.FlagSet.Bool("apply", false, "re-apply the events through the workers' own path and print what changed; needs the workers' -rules, or -no-allocations")
	noAlloc := fs.FlagSet.Bool("no-allocations", false, "with -apply: the workers run without -rules, so apply order state only")
	rulesFile := fs.String("rules", "PAYSTREAM_RULES", "", "with -apply: the workers' allocation rules file")
	coboURL := fs.String("cobo-api-url", "PAYSTREAM_COBO_API_URL", cobo.DevAPIURL, "with -apply and -rules: Cobo API base URL, including /v2")
	coboSecretFile := fs.String("cobo-api-secret-file", "PAYSTREAM_COBO_API_SECRET_FILE", "", "with -apply and -rules: file holding the Cobo API secret (hex Ed25519 seed)")
	replicas := fs.Int("stream-replicas", "PAYSTREAM_STREAM_REPLICAS", events.DefaultReplicas, "with -apply: replicas of the orders bucket, should it have to be created")
	retention := fs.Duration("retention", "PAYSTREAM_RETENTION", events.DefaultRetention, "with -apply: the workers' -retention (settled orders written expire after it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("worker replay: unexpected argument %q", fs.Arg(0))
	}
	s, err := sel.selection(time.Now())
	if err != nil {
		return err
	}
	cfg := replay.Config{Select: s, Apply: *apply, NoAllocations: *noAlloc, Stream: events.StreamConfig{Replicas: *replicas, Retention: events.Retention{Keep: *retention}}, Out: stdout}
	if *apply {
		switch {
		case *noAlloc && *rulesFile != "":
			return errors.New("-no-allocations contradicts -rules (or PAYSTREAM_RULES): the workers either run with rules or without")
		case !*noAlloc && *rulesFile == "":
			return errors.New("-apply needs the workers' -rules (and Cobo API flags), or -no-allocations if they run without rules: applying without the planner could complete an order without planning its splits")
		case *rulesFile != "":
			// Batching flags do not matter here: the workers' batchers
			// deliver what -apply plans.
			if cfg.Allocation, err = allocationConfig(*rulesFile, *coboSecretFile, *coboURL, allocation.DefaultBatchMax, allocation.DefaultBatchWait); err != nil {
				return err
			}
		}
	}
	// -apply verifies as the workers do, so it needs the keys too.
	if *verify || *apply {
		if cfg.Verifier, err = trust.Verifier(); err != nil {
			return err
		}
	}
	nc, js, err := conn.connect(ctx, "paystream-replay")
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg.JetStream = js
	_, err = replay.Replay(ctx, cfg)
	return err
}

// runDLQ is `worker dlq list` and `worker dlq redrive`.
func runDLQ(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	const usage = "usage: worker dlq list [flags] | worker dlq redrive -seq N | -all [flags]"
	if len(args) == 0 {
		return errors.New(usage)
	}
	sub := args[0]
	if sub != "list" && sub != "redrive" {
		return fmt.Errorf("unknown dlq command %q; %s", sub, usage)
	}
	fs := cli.NewFlags("worker dlq "+sub, getenv, stdout)
	conn := newNATSFlags(fs)
	sel := newSelectionFlags(fs, "start at this dead-letter stream sequence")
	var seq *uint64
	var all *bool
	if sub == "redrive" {
		seq = fs.FlagSet.Uint64("seq", 0, "send back the dead letter with this dlq_seq (see worker dlq list)")
		all = fs.FlagSet.Bool("all", false, "send back every dead letter the selection flags choose")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("worker dlq %s: unexpected argument %q", sub, fs.Arg(0))
	}
	s, err := sel.selection(time.Now())
	if err != nil {
		return err
	}
	cfg := replay.DLQConfig{Select: s, Out: stdout}
	if sub == "redrive" {
		cfg.Seq, cfg.All = *seq, *all
		switch {
		case cfg.Seq == 0 && !cfg.All:
			return errors.New("worker dlq redrive: give -seq N or -all")
		case cfg.Seq != 0 && cfg.All:
			return errors.New("worker dlq redrive: -seq and -all exclude each other")
		case cfg.Seq != 0 && s != (replay.Selection{}):
			return errors.New("worker dlq redrive: -order, -type, -since, -until and -from-seq go with -all")
		}
	}
	nc, js, err := conn.connect(ctx, "paystream-dlq")
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg.JetStream = js
	if sub == "list" {
		_, err = replay.ListDeadLetters(ctx, cfg)
		return err
	}
	_, err = replay.Redrive(ctx, cfg)
	return err
}
