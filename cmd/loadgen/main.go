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

// Defaults of loadgen's flags.
const (
	defaultURL         = "http://127.0.0.1:8080/webhooks/cobo"
	defaultN           = 20000
	defaultDuration    = 30 * time.Second
	defaultConcurrency = 64
)

// config is loadgen's command line.
type config struct {
	url         string
	seed        string
	printKey    bool
	n           int
	duration    time.Duration
	concurrency int
	rate        int
	presign     bool
	runID       string
}

// validate checks the flags that bound a run; its errors name the flag.
func (c config) validate() error {
	switch {
	case c.n < 1:
		return fmt.Errorf("-n must be positive, got %d", c.n)
	case c.duration <= 0:
		return fmt.Errorf("-duration must be positive, got %s", c.duration)
	case c.concurrency < 1:
		return fmt.Errorf("-concurrency must be positive, got %d", c.concurrency)
	case c.rate < 0:
		return fmt.Errorf("-rate must not be negative, got %d", c.rate)
	}
	return nil
}

func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	fs := cli.NewFlags("loadgen", getenv, stdout)
	url := fs.String("url", "LOADGEN_URL", defaultURL, "webhook URL (loopback)")
	seed := fs.String("seed", "LOADGEN_SEED", loadgen.DefaultSeed, "derives the signing key; ingest must trust its public key")
	printKey := fs.FlagSet.Bool("print-pubkey", false, "print the public key to pass to ingest -cobo-pubkey, and exit")
	n := fs.Int("n", "LOADGEN_N", defaultN, "requests to send at most")
	duration := fs.Duration("duration", "LOADGEN_DURATION", defaultDuration, "stop after this long at most")
	concurrency := fs.Int("concurrency", "LOADGEN_CONCURRENCY", defaultConcurrency, "requests in flight at most")
	rate := fs.Int("rate", "LOADGEN_RATE", 0, "offered requests per second; 0 sends as fast as answers allow")
	presign := fs.Bool("presign", "LOADGEN_PRESIGN", false, "sign every request before the clock starts (holds -n bodies in memory)")
	runID := fs.String("run-id", "LOADGEN_RUN_ID", strconv.FormatInt(time.Now().UnixNano(), 36), "prefix making event ids unique per run")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c := config{url: *url, seed: *seed, printKey: *printKey, n: *n, duration: *duration, concurrency: *concurrency,
		rate: *rate, presign: *presign, runID: *runID}
	if c.printKey {
		return c, nil
	}
	return c, c.validate()
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	c, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
	key := loadgen.KeyFromSeed(c.seed)
	if c.printKey {
		_, err := fmt.Fprintln(stdout, loadgen.PublicKeyHex(key))
		return err
	}
	res, err := loadgen.Run(ctx, loadgen.Options{URL: c.url, Key: key, N: c.n, Duration: c.duration, Concurrency: c.concurrency,
		Rate: c.rate, RunID: c.runID, Presign: c.presign})
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
