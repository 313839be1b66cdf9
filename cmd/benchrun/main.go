// Command benchrun measures paystream against its real binaries on
// loopback and writes the results into BENCHMARKS.md (internal/benchrun).
// `make bench` runs it; every phase is bounded in count and time.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/paystream/paystream/internal/benchrun"
	"github.com/paystream/paystream/internal/cli"
)

func main() {
	ctx, stop := cli.SignalContext()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	os.Exit(cli.ExitStatus("benchrun", err, os.Stderr))
}

// run parses the flags into benchrun.Options and runs.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("benchrun", getenv, stdout)
	var o benchrun.Options
	fs.StringVar(&o.Bin, "bin", "bin", "directory holding the built binaries")
	fs.StringVar(&o.Dir, "dir", ".bench", "working directory for data and logs (recreated)")
	fs.StringVar(&o.Out, "out", "BENCHMARKS.md", "file whose generated section is rewritten")
	fs.StringVar(&o.GoBenchFile, "gobench", ".bench/gobench.txt", "go test -bench output to include")
	fs.IntVar(&o.SaturationN, "saturation-n", 30000, "webhooks sent at saturation")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "load generator requests in flight at saturation")
	fs.IntVar(&o.FixedN, "fixed-n", 20000, "webhooks sent at the fixed rate")
	fs.IntVar(&o.Rate, "rate", 2000, "the fixed offered rate, webhooks/s")
	fs.IntVar(&o.WorkerEvents, "worker-events", 40000, "events each worker-throughput run drains")
	fs.IntVar(&o.Reps, "reps", 5, "runs of each durable-publish ceiling and worker drain, in turns with what each is compared with; the report gives medians")
	fs.StringVar(&o.BaselineBin, "baseline-bin", "", "directory with an earlier revision's worker, run on the same events after each worker run (make bench builds BASELINE there)")
	fs.StringVar(&o.BaselineRev, "baseline-rev", "baseline", "the revision -baseline-bin was built from, for the report")
	fs.DurationTo(&o.Soak, "soak", "PAYSTREAM_BENCH_SOAK", time.Minute, "soak duration (8m for the published figure: the short windows are full after 4m)")
	fs.IntVar(&o.SoakRate, "soak-rate", 1000, "offered webhooks/s during the soak")
	fs.BoolVar(&o.SoakDefaultWindows, "soak-default-windows", false, "soak with the default dedup window, stream max age and retention (they take days to fill) instead of short ones that fill within minutes")
	fs.IntVar(&o.RecoveryOrders, "recovery-orders", 400, "orders played to two allocating workers, one killed with SIGKILL, to time the recovery; 0 skips it")
	fs.IntVar(&o.RecoveryRate, "recovery-rate", 40, "orders started per second during the recovery measurement")
	var verifyOnly string
	fs.StringVar(&verifyOnly, "serve-verify-only", "", "serve ingest's webhook route on this address, verifying and storing nothing (the verify-only ceiling; benchrun starts itself with it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", cli.ErrBadFlag, fs.Arg(0))
	}
	if verifyOnly != "" {
		return benchrun.ServeVerifyOnly(ctx, verifyOnly, benchrun.LoadgenPubKey())
	}
	return benchrun.Run(ctx, o, stdout)
}
