// Command loadgen sends signed Cobo webhooks to an ingest endpoint on
// loopback and reports throughput and latency. Every run is bounded by
// -n and -duration.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/loadgen"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("loadgen", getenv, stdout)
	url := fs.String("url", "LOADGEN_URL", "http://127.0.0.1:8080/webhooks/cobo", "webhook URL (loopback)")
	seed := fs.String("seed", "LOADGEN_SEED", loadgen.DefaultSeed, "derives the signing key; ingest must trust its public key")
	printKey := fs.FlagSet.Bool("print-pubkey", false, "print the public key to pass to ingest -cobo-pubkey, and exit")
	n := fs.Int("n", "LOADGEN_N", 20000, "requests to send at most")
	duration := fs.Duration("duration", "LOADGEN_DURATION", 30*time.Second, "stop after this long at most")
	concurrency := fs.Int("concurrency", "LOADGEN_CONCURRENCY", 64, "requests in flight at most")
	rate := fs.Int("rate", "LOADGEN_RATE", 0, "offered requests per second; 0 sends as fast as answers allow")
	presign := fs.Bool("presign", "LOADGEN_PRESIGN", false, "sign every request before the clock starts (holds -n bodies in memory)")
	runID := fs.String("run-id", "LOADGEN_RUN_ID", strconv.FormatInt(time.Now().UnixNano(), 36), "prefix making event ids unique per run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	key := loadgen.KeyFromSeed(*seed)
	if *printKey {
		fmt.Fprintln(stdout, loadgen.PublicKeyHex(key))
		return nil
	}
	if *n < 1 || *concurrency < 1 || *rate < 0 || *duration <= 0 {
		return errors.New("-n, -concurrency and -duration must be positive, -rate not negative")
	}
	res, err := loadgen.Run(ctx, loadgen.Options{URL: *url, Key: key, N: *n, Duration: *duration, Concurrency: *concurrency, Rate: *rate, RunID: *runID, Presign: *presign})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if hint := res.Hint(loadgen.PublicKeyHex(key)); hint != "" {
		return errors.New(hint)
	}
	return nil
}
