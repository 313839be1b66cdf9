// Command demo runs paystream end to end on loopback, as `make run` does:
// ingest with embedded JetStream, two workers and the provider sandbox, each
// the real binary, with live progress read from their metrics. Ctrl-C stops
// everything cleanly. internal/demo does the work; this command parses its
// flags.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/demo"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (demo.Config, error) {
	fs := cli.NewFlags("demo", getenv, stdout)
	binDir := fs.String("bin", "PAYSTREAM_DEMO_BIN", demo.DefaultBinDir, "directory holding the built binaries")
	dir := fs.String("dir", "PAYSTREAM_DEMO_DIR", demo.DefaultDir, "working directory for data, keys and logs (recreated)")
	orders := fs.Int("orders", "PAYSTREAM_DEMO_ORDERS", demo.DefaultOrders, "orders the sandbox plays")
	foreign := fs.Int("foreign-orders", "PAYSTREAM_DEMO_FOREIGN_ORDERS", 0, "orders of another Cobo customer the sandbox plays too (validly signed, unknown to Cobo's order API); none may be allocated")
	undelivered := fs.Int("undelivered-orders", "PAYSTREAM_DEMO_UNDELIVERED_ORDERS", 0, "of -orders, how many never get a webhook; the workers then reconcile with Cobo every "+demo.UndeliveredReconcileEvery.String()+" and complete them")
	rate := fs.String("rate", "PAYSTREAM_DEMO_RATE", strconv.FormatFloat(demo.DefaultRate, 'f', -1, 64), "orders started per second; 0 is unbounded")
	workers := fs.Int("workers", "PAYSTREAM_DEMO_WORKERS", demo.DefaultWorkers, "worker processes")
	faults := fs.String("faults", "PAYSTREAM_DEMO_FAULTS", demo.DefaultFaults, "faults the sandbox injects into batch allocations: 500, lose, timeout, slow, ratelimit, unauthorized (401: items wait, then complete), 30001 (pricing plan, no batch behind it: items fail after the lookup), each kind[:count[:delay]]")
	coboShape := fs.String("cobo-shape", "PAYSTREAM_DEMO_COBO_SHAPE", demo.DefaultCoboShape, "the sandbox's batch allocation answers: current, or seed (no status fields, as the reference seeds)")
	merchants := fs.String("merchants", "PAYSTREAM_DEMO_MERCHANTS", demo.DefaultMerchants, "merchants the sandbox's orders belong to; add M9000 to have its referral split be a transfer to itself, which Cobo refuses")
	bitgoFaults := fs.String("bitgo-faults", "PAYSTREAM_DEMO_BITGO_FAULTS", demo.DefaultBitGoFaults, "faults the sandbox injects into BitGo allocations")
	bitgoNonceOnce := fs.Bool("bitgo-nonce-once", "PAYSTREAM_DEMO_BITGO_NONCE_ONCE", false, "the sandbox refuses any BitGo nonce it has seen, even in a byte-for-byte resend")
	duration := fs.Duration("duration", "PAYSTREAM_DEMO_DURATION", 0, "stop after this long; 0 runs until Ctrl-C")
	basePort := fs.Int("base-port", "PAYSTREAM_DEMO_BASE_PORT", 0, "move every listener: ingest N, admin N+1, NATS N+2, sandbox N+3, workers' metrics N+4 on; 0 keeps 8080, 8081, 4222, 9000 and 9091 on")
	if err := fs.Parse(args); err != nil {
		return demo.Config{}, err
	}
	if fs.NArg() > 0 {
		return demo.Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	r, err := strconv.ParseFloat(*rate, 64)
	if err != nil {
		return demo.Config{}, fmt.Errorf("-rate: %q is not a number", *rate)
	}
	return demo.Config{
		BinDir: *binDir, Dir: *dir,
		Orders: *orders, ForeignOrders: *foreign, UndeliveredOrders: *undelivered, Rate: r, Workers: *workers,
		Faults: *faults, CoboShape: *coboShape, Merchants: *merchants, BitGoFaults: *bitgoFaults, BitGoNonceOnce: *bitgoNonceOnce,
		Duration: *duration, BasePort: *basePort, Out: stdout,
	}, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
	return demo.Run(ctx, cfg)
}
