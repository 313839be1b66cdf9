// Command sandbox simulates Cobo and BitGo on loopback for demos and tests. It serves
// a Cobo payments API simulator (batch allocations, orders; signed requests
// checked as Cobo checks them; injectable faults) and a BitGo allocation
// simulator, and plays payers, sending signed webhooks for their orders to
// paystream's ingest, shuffled and duplicated as Cobo may deliver them. Its
// webhook key is derived from a public seed, so it is a test key: never
// trust it outside a sandbox. internal/sandbox does the work; this command
// parses its flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

// parsed is the command line: the sandbox's Config, or a request to print
// the webhook key instead.
type parsed struct {
	cfg       sandbox.Config
	printKey  bool
	logLevel  string
	logFormat string
}

func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (parsed, error) {
	fs := &moreFlags{Flags: cli.NewFlags("sandbox", getenv, stdout), getenv: getenv}
	listen := fs.String("listen", "PAYSTREAM_SANDBOX_LISTEN", sandbox.DefaultListen, "address serving the Cobo and BitGo API simulators; keep it on loopback")
	webhookURL := fs.String("webhook-url", "PAYSTREAM_SANDBOX_WEBHOOK_URL", sandbox.DefaultWebhookURL, "ingest endpoint receiving the webhooks")
	webhookSeed := fs.String("webhook-seed", "PAYSTREAM_SANDBOX_WEBHOOK_SEED", sandbox.DefaultWebhookSeed, "derives the webhook signing key (SHA-256 of it); ingest must trust its public key")
	printKey := fs.Bool("print-webhook-pubkey", "PAYSTREAM_SANDBOX_PRINT_WEBHOOK_PUBKEY", false, "print the webhook public key (for ingest -cobo-pubkey) and exit")
	apiPubKey := fs.String("api-pubkey", "PAYSTREAM_SANDBOX_API_PUBKEY", "", "comma-separated hex Ed25519 API public keys accepted as Biz-Api-Key")
	apiSecretFile := fs.String("api-secret-file", "PAYSTREAM_SANDBOX_API_SECRET_FILE", "", "the client's Cobo API secret file (hex 32-byte seed); its public key is accepted")
	orders := fs.Int("orders", "PAYSTREAM_SANDBOX_ORDERS", sandbox.DefaultOrders, "orders to play; 0 only serves the API")
	foreign := fs.Int("foreign-orders", "PAYSTREAM_SANDBOX_FOREIGN_ORDERS", 0, "orders of another Cobo customer to play too: validly signed webhooks for orders the order API answers 404 (paystream must dead-letter them, allocating nothing)")
	undelivered := fs.Int("undelivered-orders", "PAYSTREAM_SANDBOX_UNDELIVERED_ORDERS", 0, "of -orders, how many never get a webhook delivered, as when Cobo gave up after 10 attempts; the order API and list know them (only reconciliation completes them)")
	seed := fs.String("seed", "PAYSTREAM_SANDBOX_SEED", "", "uint64 seed making the orders reproducible; empty picks one from the clock (and logs it)")
	merchants := fs.String("merchants", "PAYSTREAM_SANDBOX_MERCHANTS", strings.Join(payer.DefaultMerchants, ","), "comma-separated merchant ids")
	duplicates := fs.float("duplicates", "PAYSTREAM_SANDBOX_DUPLICATES", sandbox.DefaultDuplicates, "probability that an event is delivered twice")
	shuffle := fs.Bool("shuffle", "PAYSTREAM_SANDBOX_SHUFFLE", true, "deliver each order's events in random order")
	lateRatio := fs.float("late-ratio", "PAYSTREAM_SANDBOX_LATE_RATIO", sandbox.DefaultLateRatio, "probability that a finished order gets a late deposit")
	rate := fs.float("rate", "PAYSTREAM_SANDBOX_RATE", sandbox.DefaultRate, "orders started per second; 0 is unbounded")
	concurrency := fs.Int("concurrency", "PAYSTREAM_SANDBOX_CONCURRENCY", payer.DefaultConcurrency, "orders played at once")
	maxAttempts := fs.Int("max-attempts", "PAYSTREAM_SANDBOX_MAX_ATTEMPTS", payer.DefaultMaxAttempts, "delivery attempts per event, as Cobo's 10")
	faults := fs.String("faults", "PAYSTREAM_SANDBOX_FAULTS", "", "faults for POST batch_allocations at start, kind[:count[:delay]] comma-separated, e.g. 500:2,lose:1,timeout:1:15s,slow:1,429:1,unauthorized:3 (401 code 2023),30001:2 (pricing plan, no batch behind it)")
	dupCode := fs.Int("duplicate-code", "PAYSTREAM_SANDBOX_DUPLICATE_CODE", cobosim.DefaultDuplicateCode, "error_code answered for a reused request_id (12009, 2040 or 30001)")
	shape := fs.String("cobo-shape", "PAYSTREAM_SANDBOX_COBO_SHAPE", cobosim.ShapeCurrent, "batch allocation answers: current (status on batches and items) or seed (no status fields, as the reference seeds)")
	keepServing := fs.Bool("keep-serving", "PAYSTREAM_SANDBOX_KEEP_SERVING", true, "keep serving the API after the orders are played, until a signal")
	logLevel := fs.String("log-level", "PAYSTREAM_SANDBOX_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_SANDBOX_LOG_FORMAT", "json", "json or console")
	bitgoEnterprise := fs.String("bitgo-enterprise-id", "PAYSTREAM_SANDBOX_BITGO_ENTERPRISE_ID", sandbox.DefaultBitGoEnterprise, "the one BitGo enterprise the simulator serves")
	bitgoTokenFile := fs.String("bitgo-token-file", "PAYSTREAM_SANDBOX_BITGO_TOKEN_FILE", "", "file holding the BitGo access token accepted; empty answers every BitGo request 401")
	bitgoKeyFile := fs.String("bitgo-signing-key-file", "PAYSTREAM_SANDBOX_BITGO_SIGNING_KEY_FILE", "", "the client's BitGo signing key file (xprv or hex); its public key verifies payloads")
	bitgoFaults := fs.String("bitgo-faults", "PAYSTREAM_SANDBOX_BITGO_FAULTS", "", "faults for POST BitGo allocations, kind[:count[:delay]] comma-separated; kinds error500, drop, lose, slow, reserve_retriable, reserved, release")
	bitgoReplayConflict := fs.Bool("bitgo-replay-conflict", "PAYSTREAM_SANDBOX_BITGO_REPLAY_CONFLICT", false, "answer a replayed clientExternalId 409 instead of 200 with the recorded allocation")
	bitgoNonceOnce := fs.Bool("bitgo-nonce-once", "PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE", false, "refuse a BitGo allocation whose nonce was seen before with 400 {\"error\",\"errorName\"}, even a byte-for-byte replay")
	if err := fs.parse(args); err != nil {
		return parsed{}, err
	}
	if fs.NArg() > 0 {
		return parsed{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	p := parsed{printKey: *printKey, logLevel: *logLevel, logFormat: *logFormat}
	if *webhookSeed == "" {
		return p, errors.New("-webhook-seed must not be empty")
	}
	p.cfg = sandbox.Config{
		Listen: *listen, WebhookURL: *webhookURL, WebhookSeed: *webhookSeed,
		APIPubKeys: cobo.ParseKeyList(*apiPubKey), APISecretFile: *apiSecretFile,
		Orders: *orders, ForeignOrders: *foreign, UndeliveredOrders: *undelivered, Merchants: cobo.ParseKeyList(*merchants),
		Duplicates: *duplicates, Shuffle: *shuffle, LateRatio: *lateRatio, Rate: *rate,
		Concurrency: *concurrency, MaxAttempts: *maxAttempts, DuplicateCode: *dupCode, KeepServing: *keepServing,
		BitGoEnterpriseID: *bitgoEnterprise, BitGoTokenFile: *bitgoTokenFile, BitGoSigningKeyFile: *bitgoKeyFile,
		BitGoReplayConflict: *bitgoReplayConflict, BitGoNonceOnce: *bitgoNonceOnce,
	}
	if p.printKey {
		return p, nil
	}
	if *seed != "" {
		s, err := strconv.ParseUint(*seed, 10, 64)
		if err != nil {
			return p, fmt.Errorf("-seed: %w", err)
		}
		p.cfg.Seed = &s
	}
	var err error
	if p.cfg.CoboShape, err = cobosim.ParseShape(*shape); err != nil {
		return p, fmt.Errorf("-cobo-shape: %w", err)
	}
	if p.cfg.Faults, err = cobosim.ParseFaultList(*faults, http.MethodPost, "/v2/payments/batch_allocations"); err != nil {
		return p, fmt.Errorf("-faults: %w", err)
	}
	if p.cfg.BitGoFaults, err = bitgosim.ParseFaultList(*bitgoFaults); err != nil {
		return p, fmt.Errorf("-bitgo-faults: %w", err)
	}
	return p, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	p, err := parseFlags(args, getenv, stdout)
	if err != nil {
		return err
	}
	if p.printKey {
		_, err := fmt.Fprintln(stdout, sandbox.WebhookPubKeyHex(p.cfg.WebhookSeed))
		return err
	}
	if p.cfg.Logger, err = cli.NewLogger(stdout, p.logLevel, p.logFormat, "sandbox"); err != nil {
		return err
	}
	sb, err := sandbox.Start(p.cfg)
	if err != nil {
		return err
	}
	return sb.Serve(ctx)
}
