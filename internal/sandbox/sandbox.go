// Package sandbox runs the provider sandbox of cmd/sandbox: one listener
// serving the Cobo payments API simulator (cobosim) and the BitGo
// allocation simulator (bitgosim), plus the payer (payer) sending signed
// webhooks for its orders to paystream's ingest. Its webhook key is
// derived from a public seed, so it is a test key: never trust it outside
// a sandbox.
package sandbox

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
)

// Defaults of Config, and of the sandbox command's flags.
const (
	DefaultListen          = "127.0.0.1:9000"
	DefaultWebhookURL      = "http://127.0.0.1:8080/webhooks/cobo"
	DefaultWebhookSeed     = "paystream-sandbox-webhook-key"
	DefaultBitGoEnterprise = "sandbox-enterprise"
	// DefaultOrders, DefaultDuplicates, DefaultLateRatio and DefaultRate
	// are the command's flag defaults; in Config their zero values mean
	// none (Orders 0 only serves the API; Rate 0 is unbounded).
	DefaultOrders     = 50
	DefaultDuplicates = 0.3
	DefaultLateRatio  = 0.2
	DefaultRate       = 10.0
	// ShutdownTimeout bounds how long in-flight API requests may finish
	// once Serve stops.
	ShutdownTimeout = 5 * time.Second
)

// PrintKeyCommand prints the public half of the default webhook key; the
// hint for an ingest answering every webhook 401 names it.
const PrintKeyCommand = "bin/sandbox -print-webhook-pubkey"

// WebhookKeyFromSeed derives the sandbox's webhook signing key: Ed25519
// from the seed SHA256(seed). Anyone knowing the seed can sign.
func WebhookKeyFromSeed(seed string) ed25519.PrivateKey {
	// The load generator derives its key the same way, so one seed makes
	// the sandbox and loadgen sign alike.
	return loadgen.KeyFromSeed(seed)
}

// WebhookPubKeyHex is the hex public key of WebhookKeyFromSeed(seed), as
// ingest's -cobo-pubkey takes it.
func WebhookPubKeyHex(seed string) string {
	return loadgen.PublicKeyHex(WebhookKeyFromSeed(seed))
}

// Config configures a Sandbox. Fields map one to one to the sandbox
// command's flags; validation errors name the flag.
type Config struct {
	// Listen serves both simulators; DefaultListen when empty. Keep it on
	// loopback: the /sandbox/ endpoints are unauthenticated.
	Listen string
	// WebhookURL receives the payer's webhooks; DefaultWebhookURL when empty.
	WebhookURL string
	// WebhookSeed derives the webhook key (WebhookKeyFromSeed);
	// DefaultWebhookSeed when empty.
	WebhookSeed string
	// APIPubKeys are hex Ed25519 public keys accepted as Biz-Api-Key.
	APIPubKeys []string
	// APISecretFile, when set, is the client's Cobo API secret file (hex
	// 32-byte seed); its public key is accepted too.
	APISecretFile string
	// Orders, ForeignOrders and UndeliveredOrders are the payer's
	// Orders, ForeignOrders and Undelivered. With no orders of either
	// kind, the sandbox only serves the APIs.
	Orders, ForeignOrders, UndeliveredOrders int
	// Seed makes the orders reproducible; nil picks one from the clock
	// and logs it.
	Seed *uint64
	// Merchants are the orders' merchant ids; payer.DefaultMerchants when
	// empty.
	Merchants []string
	// Duplicates, Shuffle, LateRatio, Rate, Concurrency and MaxAttempts
	// shape the payer's deliveries (see payer.Config). Concurrency and
	// MaxAttempts default to payer's defaults when zero.
	Duplicates  float64
	Shuffle     bool
	LateRatio   float64
	Rate        float64
	Concurrency int
	MaxAttempts int
	// Faults are queued in the Cobo simulator at start
	// (cobosim.ParseFaultList parses the flag).
	Faults []cobosim.Fault
	// DuplicateCode answers a reused request_id;
	// cobosim.DefaultDuplicateCode when zero.
	DuplicateCode int
	// CoboShape is cobosim.ShapeCurrent (when empty) or cobosim.ShapeSeed.
	CoboShape string
	// KeepServing serves the APIs after the orders are played, until ctx
	// ends; otherwise Serve returns once they are played.
	KeepServing bool
	// BitGoEnterpriseID is the one enterprise served;
	// DefaultBitGoEnterprise when empty.
	BitGoEnterpriseID string
	// BitGoTokenFile holds the accepted Bearer token; without it every
	// BitGo request gets 401.
	BitGoTokenFile string
	// BitGoSigningKeyFile is the client's signing key file (xprv or hex);
	// its public key verifies payloads. Without it every allocation gets
	// 401.
	BitGoSigningKeyFile string
	// BitGoReplayConflict and BitGoNonceOnce are bitgosim.Config's
	// ReplayConflict and NonceOnce.
	BitGoReplayConflict bool
	BitGoNonceOnce      bool
	// BitGoFaults are queued in the BitGo simulator at start
	// (bitgosim.ParseFaultList parses the flag).
	BitGoFaults []bitgosim.Fault
	// Logger receives the sandbox's, the simulators' and the payer's lines.
	Logger zerolog.Logger
}

// WithDefaults returns c with every empty field that has a default set
// to it.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.WebhookURL == "" {
		c.WebhookURL = DefaultWebhookURL
	}
	if c.WebhookSeed == "" {
		c.WebhookSeed = DefaultWebhookSeed
	}
	if len(c.Merchants) == 0 {
		c.Merchants = payer.DefaultMerchants
	}
	if c.Concurrency == 0 {
		c.Concurrency = payer.DefaultConcurrency
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = payer.DefaultMaxAttempts
	}
	if c.DuplicateCode == 0 {
		c.DuplicateCode = cobosim.DefaultDuplicateCode
	}
	if c.CoboShape == "" {
		c.CoboShape = cobosim.ShapeCurrent
	}
	if c.BitGoEnterpriseID == "" {
		c.BitGoEnterpriseID = DefaultBitGoEnterprise
	}
	return c
}

// validate checks c after WithDefaults. Its errors name the flag.
func (c Config) validate() error {
	u, err := url.Parse(c.WebhookURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("-webhook-url must be an http(s) URL, got %q", c.WebhookURL)
	case c.Orders < 0:
		return fmt.Errorf("-orders must not be negative, got %d", c.Orders)
	case c.ForeignOrders < 0:
		return fmt.Errorf("-foreign-orders must not be negative, got %d", c.ForeignOrders)
	case c.UndeliveredOrders < 0 || c.UndeliveredOrders > c.Orders:
		return fmt.Errorf("-undelivered-orders must be from 0 to -orders (%d), got %d", c.Orders, c.UndeliveredOrders)
	case !(c.Duplicates >= 0 && c.Duplicates <= 1):
		return fmt.Errorf("-duplicates must be from 0 to 1, got %v", c.Duplicates)
	case !(c.LateRatio >= 0 && c.LateRatio <= 1):
		return fmt.Errorf("-late-ratio must be from 0 to 1, got %v", c.LateRatio)
	case !(c.Rate >= 0):
		return fmt.Errorf("-rate must not be negative, got %v", c.Rate)
	case c.Concurrency < 1:
		return fmt.Errorf("-concurrency must be positive, got %d", c.Concurrency)
	case c.MaxAttempts < 1:
		return fmt.Errorf("-max-attempts must be positive, got %d", c.MaxAttempts)
	case c.CoboShape != cobosim.ShapeCurrent && c.CoboShape != cobosim.ShapeSeed:
		return fmt.Errorf("-cobo-shape must be %s or %s, got %q", cobosim.ShapeCurrent, cobosim.ShapeSeed, c.CoboShape)
	}
	for _, k := range c.APIPubKeys {
		if b, err := hex.DecodeString(k); err != nil || len(b) != ed25519.PublicKeySize {
			return fmt.Errorf("-api-pubkey: %q is not a 64-character hex Ed25519 public key", k)
		}
	}
	for _, m := range c.Merchants {
		if m == "" {
			return errors.New("-merchants must not name an empty merchant id")
		}
	}
	return nil
}

// trustHint is what to do when ingest answers every webhook 401.
func (c Config) trustHint() string {
	key := "$(" + PrintKeyCommand + ")"
	if c.WebhookSeed != DefaultWebhookSeed {
		key = WebhookPubKeyHex(c.WebhookSeed) + " (this -webhook-seed's key)"
	}
	return "ingest does not trust the sandbox's webhook key; start ingest with -cobo-pubkey " + key
}

// Sandbox is a bound listener serving the simulators, plus the payer run.
type Sandbox struct {
	cfg     Config
	seed    uint64
	apiKeys []string
	log     zerolog.Logger
	sim     *cobosim.Sim
	bsim    *bitgosim.Sim
	ln      net.Listener
	srv     *http.Server
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

// State returns the sandbox's State now.
func (sb *Sandbox) State() State {
	st := State{State: sb.sim.State(), BitGoAllocations: len(sb.bsim.Allocations())}
	st.ForeignOrderBitGoAllocations = len(sb.bsim.AllocationsNaming(st.ForeignOrderIDs...))
	return st
}

func (sb *Sandbox) getState(w http.ResponseWriter, _ *http.Request) {
	body, err := json.Marshal(sb.State())
	if err != nil {
		http.Error(w, "encode state: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// Start validates cfg, reads its key files, builds the simulators with
// their faults and binds the listener, so that a bad flag or a busy port
// fails here, before anything is served or played.
func Start(cfg Config) (*Sandbox, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	sb := &Sandbox{cfg: cfg, log: cfg.Logger}
	if cfg.Seed != nil {
		sb.seed = *cfg.Seed
	} else {
		sb.seed = uint64(time.Now().UnixNano())
	}
	for _, k := range cfg.APIPubKeys {
		sb.apiKeys = append(sb.apiKeys, strings.ToLower(k))
	}
	if cfg.APISecretFile != "" {
		secret, err := cli.ReadSecretFile(cfg.APISecretFile)
		if err != nil {
			return nil, fmt.Errorf("-api-secret-file: %w", err)
		}
		signer, err := cobo.NewAPISigner(secret)
		if err != nil {
			return nil, fmt.Errorf("-api-secret-file: %w", err)
		}
		sb.apiKeys = append(sb.apiKeys, signer.APIKey())
	}
	bcfg := bitgosim.Config{EnterpriseID: cfg.BitGoEnterpriseID, ReplayConflict: cfg.BitGoReplayConflict, NonceOnce: cfg.BitGoNonceOnce,
		Logger: cfg.Logger.With().Str("component", "bitgosim").Logger()}
	if cfg.BitGoTokenFile != "" {
		tok, err := cli.ReadSecretFile(cfg.BitGoTokenFile)
		if err != nil {
			return nil, fmt.Errorf("-bitgo-token-file: %w", err)
		}
		bcfg.AccessToken = tok
	}
	if cfg.BitGoSigningKeyFile != "" {
		raw, err := cli.ReadSecretFile(cfg.BitGoSigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
		}
		key, err := bitgo.ParseSigningKey(raw)
		if err != nil {
			return nil, fmt.Errorf("-bitgo-signing-key-file: %w", err)
		}
		bcfg.SigningPub = key.PubKey()
	}

	sb.sim = cobosim.New(cobosim.Config{APIKeys: sb.apiKeys, DuplicateCode: cfg.DuplicateCode, Shape: cfg.CoboShape,
		Logger: cfg.Logger.With().Str("component", "cobosim").Logger()})
	for _, f := range cfg.Faults {
		sb.sim.InjectFault(f)
	}
	sb.bsim = bitgosim.New(bcfg)
	for _, f := range cfg.BitGoFaults {
		sb.bsim.InjectFault(f)
	}
	mux := http.NewServeMux()
	// Cobo: /v2/... and the operator's /sandbox/...; BitGo: /api/network/...
	// The prefixes do not clash.
	mux.Handle("/", sb.warnOnFirstCall(sb.sim, "/v2", coboKeysMissing(sb.apiKeys)))
	mux.Handle("/api/network/", sb.warnOnFirstCall(sb.bsim, "/api/network/", bitgoKeysMissing(bcfg)))
	// Served here rather than by cobosim, to add the BitGo side.
	mux.HandleFunc("GET /sandbox/state", sb.getState)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("-listen %s: %w", cfg.Listen, err)
	}
	sb.ln = ln
	sb.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		// No WriteTimeout: FaultTimeout holds answers on purpose, and ends
		// when the client goes away.
		IdleTimeout: time.Minute,
	}
	return sb, nil
}

// coboKeysMissing is the warning for Cobo API calls when no API key is
// configured, or "" when one is.
func coboKeysMissing(keys []string) string {
	if len(keys) > 0 {
		return ""
	}
	return "a Cobo API request arrived but no API keys are configured (-api-pubkey or -api-secret-file): every Cobo API request gets 401 code 2024"
}

// bitgoKeysMissing is the warning for BitGo calls when the token or the
// signing key is not configured, or "" when both are.
func bitgoKeysMissing(c bitgosim.Config) string {
	var missing []string
	if c.AccessToken == "" {
		missing = append(missing, "-bitgo-token-file (every BitGo request gets 401)")
	}
	if c.SigningPub == nil {
		missing = append(missing, "-bitgo-signing-key-file (every BitGo allocation gets 401)")
	}
	if len(missing) == 0 {
		return ""
	}
	return "a BitGo API request arrived but the sandbox has no " + strings.Join(missing, " and no ")
}

// warnOnFirstCall serves next, logging warning at warn level at the first
// request whose path starts with prefix: the sandbox warns about missing
// API keys only once something calls the API they guard, so that a
// sandbox used only to send webhooks stays quiet. An empty warning
// serves next unchanged.
func (sb *Sandbox) warnOnFirstCall(next http.Handler, prefix, warning string) http.Handler {
	if warning == "" {
		return next
	}
	var once sync.Once
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, prefix) {
			once.Do(func() { sb.log.Warn().Str("path", r.URL.Path).Msg(warning) })
		}
		next.ServeHTTP(w, r)
	})
}

// Addr is the bound address, useful with Listen 127.0.0.1:0.
func (sb *Sandbox) Addr() string { return sb.ln.Addr().String() }

// Serve serves the APIs, plays the orders, then (with KeepServing, or
// when there are no orders) serves until ctx ends. It always shuts the
// server down before returning. The payer's deliveries that every answer
// refused with 401 are not an error: the payer logs TrustHint's advice.
func (sb *Sandbox) Serve(ctx context.Context) error {
	c := sb.cfg
	// The payer stops with Serve, whichever way Serve returns.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() { serveErr <- sb.srv.Serve(sb.ln) }()
	defer func() {
		// A fresh context: ctx is usually already cancelled here.
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := sb.srv.Shutdown(sctx); err != nil {
			sb.log.Warn().Err(err).Msg("shutdown did not finish in time")
			_ = sb.srv.Close()
		}
	}()

	key := WebhookKeyFromSeed(c.WebhookSeed)
	if tcp, ok := sb.ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		sb.log.Warn().Str("addr", sb.Addr()).Msg("the sandbox's /sandbox/ endpoints are unauthenticated and its webhook key is public: serve it on loopback only")
	}
	sb.log.Info().Str("addr", sb.Addr()).Str("cobo_api", "http://"+sb.Addr()+"/v2").
		Str("webhook_pubkey", WebhookPubKeyHex(c.WebhookSeed)).
		Int("api_keys", len(sb.apiKeys)).Int("faults", len(c.Faults)).Int("duplicate_code", c.DuplicateCode).Str("cobo_shape", c.CoboShape).Msg("sandbox listening")

	if c.Orders > 0 || c.ForeignOrders > 0 {
		seedLog := sb.log.Info().Uint64("seed", sb.seed)
		if c.Seed == nil {
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
				WebhookURL: c.WebhookURL, WebhookKey: key, Orders: c.Orders, ForeignOrders: c.ForeignOrders, Merchants: c.Merchants,
				Seed: sb.seed, Duplicates: c.Duplicates, Shuffle: c.Shuffle, LateRatio: c.LateRatio, Undelivered: c.UndeliveredOrders,
				Concurrency: c.Concurrency, MaxAttempts: c.MaxAttempts, Rate: c.Rate, Sim: sb.sim, TrustHint: c.trustHint(),
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
		if !c.KeepServing || ctx.Err() != nil {
			return nil
		}
		sb.log.Info().Msg("orders played; serving the API until a signal")
	}
	select {
	case <-ctx.Done():
		sb.log.Info().Interface("state", sb.State()).Msg("sandbox stopping")
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}
