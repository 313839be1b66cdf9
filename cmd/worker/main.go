// Command worker consumes stored webhooks and keeps every pay-in order's
// state. Run any number of replicas against the same NATS.
//
// Its operator commands read and repair the stored events:
//
//	worker replay [-order ID] [-type T] [-since T] [-until T] [-from-seq N] [-verify] [-apply] ...
//	worker dlq list [-order ID] [-type T] ...
//	worker dlq redrive -seq N | -all ...
//	worker reconcile [-since T] [-dry-run] -rules F -cobo-api-secret-file F ...
//	worker help [command]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/worker"
)

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
func exitStatus(err error, stderr io.Writer) int { return cli.ExitStatus("worker", err, stderr) }

// commands are the operator commands; the worker itself runs without one.
var commands = []struct {
	name, summary string
	run           func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error
}{
	{"replay", "print stored events as JSON lines; -verify re-checks their signatures, -apply re-applies them", runReplay},
	{"dlq", "list dead letters, or send them back to the event stream (worker dlq list|redrive)", runDLQ},
	{"reconcile", "run one reconciliation pass with Cobo's order list by hand", runReconcile},
	{"console", "serve the operator console (orders, timelines, dead letters, redrive) in the browser", runConsole},
}

// run is the whole command line: a command when the first argument names
// one, else the worker. Logs and JSON lines go to stdout; help, flag
// errors and notes for the operator to stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || len(args[0]) > 0 && args[0][0] == '-' {
		return runWorker(ctx, args, getenv, stdout, stderr)
	}
	name, rest := args[0], args[1:]
	if name == "help" {
		return help(ctx, rest, getenv, stdout)
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(ctx, rest, getenv, stdout, stderr)
		}
	}
	return fmt.Errorf("%w: unknown command %q (worker -h lists the commands)", errUsage, name)
}

// runWorker is the worker itself: its flags into a config, then the
// worker until ctx ends.
func runWorker(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c workerConfig
	if err := parseArgs(newWorkerFlags(&c, getenv, stderr), args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log, err := cli.NewLogger(stdout, c.logLevel, c.logFormat, "worker")
	if err != nil {
		return fmt.Errorf("%w: -log-level, -log-format: %w", errUsage, err)
	}
	cfg, err := c.config(ctx, log)
	if err != nil {
		return err
	}
	return c.nats.Refused(nameFlags(worker.Run(ctx, cfg)))
}

// parseArgs parses a command's flags; the commands take no other
// arguments.
func parseArgs(fs *cli.Flags, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
}

// help is `worker help [command]`: the usage asked for, on stdout.
func help(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	switch {
	case len(args) == 0:
		newWorkerFlags(&workerConfig{}, getenv, stdout).Usage()
		return nil
	case len(args) > 1:
		return fmt.Errorf("%w: worker help takes one command, got %q", errUsage, args)
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, []string{"-h"}, getenv, stdout, stdout)
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	return fmt.Errorf("%w: unknown command %q (worker -h lists the commands)", errUsage, args[0])
}

// usage prints the worker's usage: its commands, then its flags.
func usage(fs *cli.Flags) {
	out := fs.Output()
	fmt.Fprint(out, `Usage:
  worker [flags]              consume stored webhooks and keep every pay-in order's state
  worker <command> [flags]    an operator's command

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(out, "  %-10s  %s\n", c.name, c.summary)
	}
	fmt.Fprint(out, `  help        this help; worker help <command> shows a command's

Run worker <command> -h for a command's flags.

Flags of the worker:
`)
	fs.PrintDefaults()
}
