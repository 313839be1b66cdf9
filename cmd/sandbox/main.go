// Command sandbox simulates Cobo and BitGo on loopback for demos and tests. It serves
// a Cobo payments API simulator (batch allocations, orders; signed requests
// checked as Cobo checks them; injectable faults) and plays payers, sending
// signed webhooks for their orders to paystream's ingest, shuffled and
// duplicated as Cobo may deliver them. Its webhook key is derived from a
// public seed, so it is a test key: never trust it outside a sandbox.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
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

// Defaults of the sandbox's flags.
const (
	DefaultListen      = "127.0.0.1:9000"
	DefaultWebhookURL  = "http://127.0.0.1:8080/webhooks/cobo"
	DefaultWebhookSeed = "paystream-sandbox-webhook-key"
	// shutdownTimeout bounds how long in-flight API requests may finish.
	shutdownTimeout = 5 * time.Second
)

// WebhookKeyFromSeed derives the sandbox's webhook signing key:
// Ed25519 from the seed SHA256(seed). Anyone knowing the seed can sign.
func WebhookKeyFromSeed(seed string) ed25519.PrivateKey {
	sum := sha256.Sum256([]byte(seed))
	return ed25519.NewKeyFromSeed(sum[:])
}

// options are the parsed flags.
type options struct {
	listen       string
	webhookURL   string
	webhookKey   ed25519.PrivateKey
	printPubKey  bool
	apiKeys      []string
	orders       int
	foreign      int
	undelivered  int
	seed         uint64
	merchants    []string
	duplicates   float64
	shuffle      bool
	lateRatio    float64
	rate         float64
	concurrency  int
	maxAttempts  int
	faults       []cobosim.Fault
	dupCode      int
	shape        string
	keepServing  bool
	logLevel     string
	logFormat    string
	seedFromTime bool
	bitgo        bitgosim.Config
	bitgoFaults  []bitgosim.Fault
}

func parseOptions(args []string, getenv func(string) string, stdout io.Writer) (options, error) {
	fs := &moreFlags{Flags: cli.NewFlags("sandbox", getenv, stdout), getenv: getenv}
	listen := fs.String("listen", "PAYSTREAM_SANDBOX_LISTEN", DefaultListen, "address serving the Cobo and BitGo API simulators; keep it on loopback")
	webhookURL := fs.String("webhook-url", "PAYSTREAM_SANDBOX_WEBHOOK_URL", DefaultWebhookURL, "ingest endpoint receiving the webhooks")
	webhookSeed := fs.String("webhook-seed", "PAYSTREAM_SANDBOX_WEBHOOK_SEED", DefaultWebhookSeed, "derives the webhook signing key (SHA-256 of it); ingest must trust its public key")
	printKey := fs.Bool("print-webhook-pubkey", "PAYSTREAM_SANDBOX_PRINT_WEBHOOK_PUBKEY", false, "print the webhook public key (for ingest -cobo-pubkey) and exit")
	apiPubKey := fs.String("api-pubkey", "PAYSTREAM_SANDBOX_API_PUBKEY", "", "comma-separated hex Ed25519 API public keys accepted as Biz-Api-Key")
	apiSecretFile := fs.String("api-secret-file", "PAYSTREAM_SANDBOX_API_SECRET_FILE", "", "the client's Cobo API secret file (hex 32-byte seed); its public key is accepted")
	orders := fs.Int("orders", "PAYSTREAM_SANDBOX_ORDERS", 50, "orders to play; 0 only serves the API")
	foreign := fs.Int("foreign-orders", "PAYSTREAM_SANDBOX_FOREIGN_ORDERS", 0, "orders of another Cobo customer to play too: validly signed webhooks for orders the order API answers 404 (paystream must dead-letter them, allocating nothing)")
	undelivered := fs.Int("undelivered-orders", "PAYSTREAM_SANDBOX_UNDELIVERED_ORDERS", 0, "of -orders, how many never get a webhook delivered, as when Cobo gave up after 10 attempts; the order API and list know them (only reconciliation completes them)")
	seed := fs.String("seed", "PAYSTREAM_SANDBOX_SEED", "", "uint64 seed making the orders reproducible; empty picks one from the clock (and logs it)")
	merchants := fs.String("merchants", "PAYSTREAM_SANDBOX_MERCHANTS", strings.Join(payer.DefaultMerchants, ","), "comma-separated merchant ids")
	duplicates := fs.Float("duplicates", "PAYSTREAM_SANDBOX_DUPLICATES", 0.3, "probability that an event is delivered twice")
	shuffle := fs.Bool("shuffle", "PAYSTREAM_SANDBOX_SHUFFLE", true, "deliver each order's events in random order")
	lateRatio := fs.Float("late-ratio", "PAYSTREAM_SANDBOX_LATE_RATIO", 0.2, "probability that a finished order gets a late deposit")
	rate := fs.Float("rate", "PAYSTREAM_SANDBOX_RATE", 10, "orders started per second; 0 is unbounded")
	concurrency := fs.Int("concurrency", "PAYSTREAM_SANDBOX_CONCURRENCY", payer.DefaultConcurrency, "orders played at once")
	maxAttempts := fs.Int("max-attempts", "PAYSTREAM_SANDBOX_MAX_ATTEMPTS", payer.DefaultMaxAttempts, "delivery attempts per event, as Cobo's 10")
	faults := fs.String("faults", "PAYSTREAM_SANDBOX_FAULTS", "", "faults for POST batch_allocations at start, kind[:count[:delay]] comma-separated, e.g. 500:2,lose:1,timeout:1:15s,slow:1,429:1,unauthorized:3 (401 code 2023),30001:2 (pricing plan, no batch behind it)")
	dupCode := fs.Int("duplicate-code", "PAYSTREAM_SANDBOX_DUPLICATE_CODE", cobosim.DefaultDuplicateCode, "error_code answered for a reused request_id (12009, 2040 or 30001)")
	shape := fs.String("cobo-shape", "PAYSTREAM_SANDBOX_COBO_SHAPE", cobosim.ShapeCurrent, "batch allocation answers: current (status on batches and items) or seed (no status fields, as the reference seeds)")
	keepServing := fs.Bool("keep-serving", "PAYSTREAM_SANDBOX_KEEP_SERVING", true, "keep serving the API after the orders are played, until a signal")
	logLevel := fs.String("log-level", "PAYSTREAM_SANDBOX_LOG_LEVEL", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "PAYSTREAM_SANDBOX_LOG_FORMAT", "json", "json or console")
	bitgoEnterprise := fs.String("bitgo-enterprise-id", "PAYSTREAM_SANDBOX_BITGO_ENTERPRISE_ID", DefaultBitGoEnterprise, "the one BitGo enterprise the simulator serves")
	bitgoTokenFile := fs.String("bitgo-token-file", "PAYSTREAM_SANDBOX_BITGO_TOKEN_FILE", "", "file holding the BitGo access token accepted; empty answers every BitGo request 401")
	bitgoKeyFile := fs.String("bitgo-signing-key-file", "PAYSTREAM_SANDBOX_BITGO_SIGNING_KEY_FILE", "", "the client's BitGo signing key file (xprv or hex); its public key verifies payloads")
	bitgoFaults := fs.String("bitgo-faults", "PAYSTREAM_SANDBOX_BITGO_FAULTS", "", "faults for POST BitGo allocations, kind[:count[:delay]] comma-separated; kinds error500, drop, lose, slow, reserve_retriable, reserved, release")
	bitgoReplayConflict := fs.Bool("bitgo-replay-conflict", "PAYSTREAM_SANDBOX_BITGO_REPLAY_CONFLICT", false, "answer a replayed clientExternalId 409 instead of 200 with the recorded allocation")
	bitgoNonceOnce := fs.Bool("bitgo-nonce-once", "PAYSTREAM_SANDBOX_BITGO_NONCE_ONCE", false, "refuse a BitGo allocation whose nonce was seen before with 400 {\"error\",\"errorName\"}, even a byte-for-byte replay")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o := options{
		listen: *listen, webhookURL: *webhookURL, webhookKey: WebhookKeyFromSeed(*webhookSeed), printPubKey: *printKey,
		orders: *orders, foreign: *foreign, merchants: cobo.ParseKeyList(*merchants), duplicates: *duplicates, shuffle: *shuffle,
		lateRatio: *lateRatio, rate: *rate, concurrency: *concurrency, maxAttempts: *maxAttempts,
		dupCode: *dupCode, keepServing: *keepServing, logLevel: *logLevel, logFormat: *logFormat,
	}
	o.undelivered = *undelivered
	if o.printPubKey {
		return o, nil
	}
	switch {
	case o.orders < 0 || o.foreign < 0:
		return o, errors.New("-orders and -foreign-orders must not be negative")
	case o.undelivered < 0 || o.undelivered > o.orders:
		return o, errors.New("-undelivered-orders must be from 0 to -orders")
	case !(o.duplicates >= 0 && o.duplicates <= 1) || !(o.lateRatio >= 0 && o.lateRatio <= 1):
		return o, errors.New("-duplicates and -late-ratio must be from 0 to 1")
	case !(o.rate >= 0):
		return o, errors.New("-rate must not be negative")
	case o.concurrency < 1 || o.maxAttempts < 1:
		return o, errors.New("-concurrency and -max-attempts must be positive")
	case *webhookSeed == "":
		return o, errors.New("-webhook-seed must not be empty")
	}
	if *seed == "" {
		o.seed, o.seedFromTime = uint64(time.Now().UnixNano()), true
	} else {
		s, err := strconv.ParseUint(*seed, 10, 64)
		if err != nil {
			return o, fmt.Errorf("-seed: %w", err)
		}
		o.seed = s
	}
	for _, k := range cobo.ParseKeyList(*apiPubKey) {
		if b, err := hex.DecodeString(k); err != nil || len(b) != ed25519.PublicKeySize {
			return o, fmt.Errorf("-api-pubkey: %q is not a 64-character hex Ed25519 public key", k)
		}
		o.apiKeys = append(o.apiKeys, strings.ToLower(k))
	}
	if *apiSecretFile != "" {
		secret, err := cli.ReadSecretFile(*apiSecretFile)
		if err != nil {
			return o, fmt.Errorf("-api-secret-file: %w", err)
		}
		signer, err := cobo.NewAPISigner(secret)
		if err != nil {
			return o, fmt.Errorf("-api-secret-file: %w", err)
		}
		o.apiKeys = append(o.apiKeys, signer.APIKey())
	}
	shapeName, err := cobosim.ParseShape(*shape)
	if err != nil {
		return o, fmt.Errorf("-cobo-shape: %w", err)
	}
	o.shape = shapeName
	fl, err := cobosim.ParseFaultList(*faults, http.MethodPost, "/v2/payments/batch_allocations")
	if err != nil {
		return o, fmt.Errorf("-faults: %w", err)
	}
	o.faults = fl
	o.bitgo = bitgosim.Config{EnterpriseID: *bitgoEnterprise, ReplayConflict: *bitgoReplayConflict}
	o.bitgo.NonceOnce = *bitgoNonceOnce
	if *bitgoTokenFile != "" {
		tok, err := cli.ReadSecretFile(*bitgoTokenFile)
		if err != nil {
			return o, fmt.Errorf("-bitgo-token-file: %w", err)
		}
		o.bitgo.AccessToken = tok
	}
	if *bitgoKeyFile != "" {
		raw, err := cli.ReadSecretFile(*bitgoKeyFile)
		if err != nil {
			return o, fmt.Errorf("-bitgo-signing-key-file: %w", err)
		}
		key, err := bitgo.ParseSigningKey(raw)
		if err != nil {
			return o, fmt.Errorf("-bitgo-signing-key-file: %w", err)
		}
		o.bitgo.SigningPub = key.PubKey()
	}
	if o.bitgoFaults, err = parseBitGoFaults(*bitgoFaults); err != nil {
		return o, fmt.Errorf("-bitgo-faults: %w", err)
	}
	return o, nil
}

// DefaultBitGoEnterprise is the enterprise id the BitGo simulator serves
// unless told otherwise.
const DefaultBitGoEnterprise = "sandbox-enterprise"

// parseBitGoFaults parses kind[:count[:delay]] entries.
func parseBitGoFaults(s string) ([]bitgosim.Fault, error) {
	var out []bitgosim.Fault
	for _, entry := range cobo.ParseKeyList(s) {
		parts := strings.Split(entry, ":")
		f := bitgosim.Fault{Kind: bitgosim.FaultKind(parts[0]), Count: 1}
		switch f.Kind {
		case bitgosim.FaultError500, bitgosim.FaultLoseResponse, bitgosim.FaultSlow,
			bitgosim.FaultReserveRetriable, bitgosim.FaultReserved, bitgosim.FaultRelease, bitgosim.FaultDrop:
		default:
			return nil, fmt.Errorf("%q: unknown kind %q", entry, parts[0])
		}
		if len(parts) > 3 {
			return nil, fmt.Errorf("%q: want kind[:count[:delay]]", entry)
		}
		if len(parts) > 1 {
			n, err := strconv.Atoi(parts[1])
			if err != nil || n < 1 {
				return nil, fmt.Errorf("%q: count must be a positive integer", entry)
			}
			f.Count = n
		}
		if len(parts) > 2 {
			d, err := time.ParseDuration(parts[2])
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%q: delay must be a positive duration", entry)
			}
			f.Delay = d
		}
		out = append(out, f)
	}
	return out, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	o, err := parseOptions(args, getenv, stdout)
	if err != nil {
		return err
	}
	if o.printPubKey {
		_, err := fmt.Fprintln(stdout, hex.EncodeToString(o.webhookKey.Public().(ed25519.PublicKey)))
		return err
	}
	log, err := cli.NewLogger(stdout, o.logLevel, o.logFormat, "sandbox")
	if err != nil {
		return err
	}
	sb, err := start(o, log)
	if err != nil {
		return err
	}
	return sb.serve(ctx)
}

// sandbox is a bound listener serving the simulators, plus the payer run.
type sandbox struct {
	opts options
	log  zerolog.Logger
	sim  *cobosim.Sim
	bsim *bitgosim.Sim
	ln   net.Listener
	srv  *http.Server
}

// State is what GET /sandbox/state answers: the Cobo simulator's state
// (its fields inline) plus the BitGo simulator's allocations, and how many
// of them name a foreign order in their notes. A PSP that confirms every
// order with Cobo's order API before allocating leaves both
// foreign_order_items and foreign_order_bitgo_allocations at 0.
type State struct {
	cobosim.State
	BitGoAllocations             int `json:"bitgo_allocations"`
	ForeignOrderBitGoAllocations int `json:"foreign_order_bitgo_allocations"`
}

// state returns the sandbox's State now.
func (sb *sandbox) state() State {
	st := State{State: sb.sim.State(), BitGoAllocations: len(sb.bsim.Allocations())}
	st.ForeignOrderBitGoAllocations = len(sb.bsim.AllocationsNaming(st.ForeignOrderIDs...))
	return st
}

func (sb *sandbox) getState(w http.ResponseWriter, _ *http.Request) {
	body, err := json.Marshal(sb.state())
	if err != nil {
		http.Error(w, "encode state: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// start builds the simulators and binds the listener, so that a busy port
// fails here, before anything is played.
func start(o options, log zerolog.Logger) (*sandbox, error) {
	sim := cobosim.New(cobosim.Config{APIKeys: o.apiKeys, DuplicateCode: o.dupCode, Shape: o.shape, Logger: log.With().Str("component", "cobosim").Logger()})
	for _, f := range o.faults {
		sim.InjectFault(f)
	}
	mux := http.NewServeMux()
	mux.Handle("/", sim) // Cobo: /v2/... and the operator's /sandbox/...
	// Cobo's routes are all under /v2 and /sandbox, so the prefixes do not clash.
	bcfg := o.bitgo
	bcfg.Logger = log.With().Str("component", "bitgosim").Logger()
	bsim := bitgosim.New(bcfg)
	for _, f := range o.bitgoFaults {
		bsim.InjectFault(f)
	}
	mux.Handle("/api/network/", bsim)
	sb := &sandbox{opts: o, log: log, sim: sim, bsim: bsim}
	// Served here rather than by cobosim, to add the BitGo side.
	mux.HandleFunc("GET /sandbox/state", sb.getState)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", o.listen, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		// No WriteTimeout: FaultTimeout holds answers on purpose, and ends
		// when the client goes away.
		IdleTimeout: time.Minute,
	}
	sb.ln, sb.srv = ln, srv
	return sb, nil
}

// addr is the bound address, useful with -listen 127.0.0.1:0.
func (sb *sandbox) addr() string { return sb.ln.Addr().String() }

// serve serves the API, plays the orders, then (with -keep-serving, or
// when there are no orders) serves until ctx ends. It always shuts the
// server down before returning.
func (sb *sandbox) serve(ctx context.Context) error {
	o := sb.opts
	// The payer stops with serve, whichever way serve returns.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() { serveErr <- sb.srv.Serve(sb.ln) }()
	defer func() {
		// A fresh context: ctx is usually already cancelled here.
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := sb.srv.Shutdown(sctx); err != nil {
			sb.log.Warn().Err(err).Msg("shutdown did not finish in time")
			_ = sb.srv.Close()
		}
	}()

	if tcp, ok := sb.ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		sb.log.Warn().Str("addr", sb.addr()).Msg("the sandbox's /sandbox/ endpoints are unauthenticated and its webhook key is public: serve it on loopback only")
	}
	if len(o.apiKeys) == 0 {
		sb.log.Warn().Msg("no API keys configured (-api-pubkey or -api-secret-file): every Cobo API request will get 401 code 2024")
	}
	sb.log.Info().Str("addr", sb.addr()).Str("cobo_api", "http://"+sb.addr()+"/v2").
		Str("webhook_pubkey", hex.EncodeToString(o.webhookKey.Public().(ed25519.PublicKey))).
		Int("api_keys", len(o.apiKeys)).Int("faults", len(o.faults)).Int("duplicate_code", o.dupCode).Str("cobo_shape", o.shape).Msg("sandbox listening")

	if o.orders > 0 || o.foreign > 0 {
		seedLog := sb.log.Info().Uint64("seed", o.seed)
		if o.seedFromTime {
			seedLog = seedLog.Str("hint", "pass -seed to replay this run")
		}
		seedLog.Msg("payer seed")
		type result struct {
			stats payer.Stats
			err   error
		}
		done := make(chan result, 1)
		go func() {
			st, err := payer.Run(ctx, payer.Config{
				WebhookURL: o.webhookURL, WebhookKey: o.webhookKey, Orders: o.orders, ForeignOrders: o.foreign, Merchants: o.merchants,
				Seed: o.seed, Duplicates: o.duplicates, Shuffle: o.shuffle, LateRatio: o.lateRatio, Undelivered: o.undelivered,
				Concurrency: o.concurrency, MaxAttempts: o.maxAttempts, Rate: o.rate, Sim: sb.sim,
				Logger: sb.log.With().Str("component", "payer").Logger(),
			})
			done <- result{st, err}
		}()
		select {
		case res := <-done:
			if res.err != nil && !errors.Is(res.err, context.Canceled) {
				return fmt.Errorf("payer: %w", res.err)
			}
			sb.log.Info().Interface("stats", res.stats).Msg("payer stats")
		case err := <-serveErr:
			cancel()
			<-done
			return fmt.Errorf("serve: %w", err)
		}
		if !o.keepServing || ctx.Err() != nil {
			return nil
		}
		sb.log.Info().Msg("orders played; serving the API until a signal")
	}
	select {
	case <-ctx.Done():
		sb.log.Info().Interface("state", sb.state()).Msg("sandbox stopping")
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}
