// Package ingest assembles the ingest service: the public webhook listener,
// the private admin listener, and the JetStream store behind them, embedded
// or remote.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/admin"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/natsconn"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/webhook"
)

// Defaults for Config.
const (
	DefaultListen      = ":8080"
	DefaultAdminListen = "127.0.0.1:8081"
	DefaultNATSListen  = "127.0.0.1:4222"
	DefaultDataDir     = "./data"
	// WebhookPath is where Cobo delivers webhooks.
	WebhookPath = "/webhooks/cobo"
)

// Values of Config.GroupCommit.
const (
	GroupCommitAuto = "auto"
	GroupCommitOn   = "on"
	GroupCommitOff  = "off"
)

// Config configures the ingest service.
type Config struct {
	// Listen is the public webhook listener.
	Listen string
	// AdminListen is the private listener for health, metrics and orders.
	AdminListen string
	// AdminToken, when set, is required as a Bearer token on AdminListen.
	AdminToken string
	// Pprof serves /debug/pprof/ on AdminListen.
	Pprof bool
	// NATSURL is the NATS server list; empty runs an embedded server.
	NATSURL string
	// NATSOptions are extra connection options (credentials, TLS).
	NATSOptions []nats.Option
	// NATSConnectWait bounds the wait for a remote NATSURL to answer at
	// start-up; zero tries once.
	NATSConnectWait time.Duration
	// NATSListen is where the embedded server accepts clients (workers).
	// Anything but loopback needs NATSListenTLSCert and NATSListenTLSKey.
	NATSListen string
	// NATSListenTLSCert and NATSListenTLSKey make the embedded server's
	// client listener require TLS with this certificate.
	NATSListenTLSCert, NATSListenTLSKey string
	// DataDir is the embedded server's storage, and its credentials
	// directory (natsembed.CredentialsDir).
	DataDir string
	// CoboEnv selects Cobo's published webhook key: dev or prod. It has no
	// default: either it or CoboPubKeys must be set, so that a production
	// deployment cannot trust the dev key by forgetting a flag.
	CoboEnv string
	// CoboPubKeys, when set, replaces the trusted webhook keys (hex).
	CoboPubKeys []string
	// MaxSkew, when positive, rejects timestamps outside now±MaxSkew.
	MaxSkew time.Duration
	// StoreTimeout bounds a JetStream store; past it the answer is 503.
	StoreTimeout time.Duration
	// MaxInFlight bounds the webhooks handled at once; more get a fast
	// 503. webhook.DefaultMaxInFlight when zero.
	MaxInFlight int
	// StoreSync is the embedded server's fsync interval: zero (the
	// default) fsyncs every event before it is acknowledged, so a 200
	// means it is on disk; a positive interval trades that for speed (see
	// natsembed.Config.SyncInterval).
	StoreSync time.Duration
	// GroupCommit says whether concurrent webhooks are stored as one
	// JetStream atomic batch, one disk sync for many (events.GroupCommitter):
	// GroupCommitAuto (the default) does so exactly when the embedded server
	// syncs every write (StoreSync zero), where it is measured to pay
	// (BENCHMARKS.md); GroupCommitOn and GroupCommitOff force it.
	GroupCommit string
	// Stream sizes the event stream.
	Stream events.StreamConfig
	// Logger receives the service's logs.
	Logger zerolog.Logger
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.AdminListen == "" {
		c.AdminListen = DefaultAdminListen
	}
	if c.NATSListen == "" {
		c.NATSListen = DefaultNATSListen
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = webhook.DefaultStoreTimeout
	}
	if c.GroupCommit == "" {
		c.GroupCommit = GroupCommitAuto
	}
	c.Stream = c.Stream.WithDefaults()
	return c
}

func (c Config) validate() error {
	if err := cobo.ValidateTrust(c.CoboEnv, c.CoboPubKeys); err != nil {
		return err
	}
	if c.NATSURL == "" && !httpapi.IsLoopback(c.NATSListen) && c.NATSListenTLSCert == "" {
		return fmt.Errorf("NATSListen %q is not loopback: the embedded server then needs NATSListenTLSCert and NATSListenTLSKey", c.NATSListen)
	}
	if c.Pprof && c.AdminToken == "" && !httpapi.IsLoopback(c.AdminListen) {
		return fmt.Errorf("Pprof on AdminListen %q, which is not loopback, needs AdminToken", c.AdminListen)
	}
	if c.MaxInFlight < 0 {
		return fmt.Errorf("MaxInFlight must be positive, got %d", c.MaxInFlight)
	}
	if (c.NATSListenTLSCert == "") != (c.NATSListenTLSKey == "") {
		return errors.New("NATSListenTLSCert and NATSListenTLSKey go together")
	}
	if c.StoreSync < 0 {
		return fmt.Errorf("StoreSync must not be negative (0 syncs always), got %s", c.StoreSync)
	}
	switch c.GroupCommit {
	case GroupCommitAuto, GroupCommitOn, GroupCommitOff:
	default:
		return fmt.Errorf("GroupCommit must be %s, %s or %s, got %q", GroupCommitAuto, GroupCommitOn, GroupCommitOff, c.GroupCommit)
	}
	if c.MaxSkew < 0 {
		return fmt.Errorf("MaxSkew must not be negative, got %s", c.MaxSkew)
	}
	if c.StoreTimeout <= 0 || c.StoreTimeout >= 2*time.Second {
		return fmt.Errorf("StoreTimeout must be in (0, 2s) to answer inside Cobo's deadline, got %s", c.StoreTimeout)
	}
	if err := c.Stream.Validate(); err != nil {
		return fmt.Errorf("Stream.%w", err)
	}
	return nil
}

// ParseStoreSync reads a -store-sync value: "always" (fsync every write
// before acknowledging it) is 0, a positive duration the lazy interval.
func ParseStoreSync(s string) (time.Duration, error) {
	if s == "always" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want always or a positive duration, got %q", s)
	}
	return d, nil
}

// StoreSyncString is the -store-sync value of d.
func StoreSyncString(d time.Duration) string {
	if d <= 0 {
		return "always"
	}
	return d.String()
}

// groupCommit resolves GroupCommit: auto groups only on an embedded
// server that syncs every write. With a lazy sync an atomic batch costs
// more than the single publishes it replaces (its staging store on disk),
// and on a remote server paystream cannot tell how it syncs.
func (c Config) groupCommit() bool {
	switch c.GroupCommit {
	case GroupCommitOn:
		return true
	case GroupCommitOff:
		return false
	}
	return c.NATSURL == "" && c.StoreSync == 0
}

// TrustedKeys returns the webhook keys the config trusts.
func (c Config) TrustedKeys() []string { return cobo.TrustedKeys(c.CoboEnv, c.CoboPubKeys) }

// Service is a running ingest.
type Service struct {
	cfg      Config
	embedded *server.Server
	creds    natsembed.Credentials
	nc       *nats.Conn
	js       jetstream.JetStream
	// group is nil unless webhooks are group-committed.
	group    *events.GroupCommitter
	public   *http.Server
	admin    *http.Server
	publicLn net.Listener
	adminLn  net.Listener
	served   chan error
	closing  sync.Once
}

// Start binds both listeners, connects to (or starts) NATS and ensures the
// stream, then serves in the background. A busy port fails here.
func Start(ctx context.Context, cfg Config) (_ *Service, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("ingest config: %w", err)
	}
	verifier, err := cobo.NewVerifier(cfg.TrustedKeys()...)
	if err != nil {
		return nil, fmt.Errorf("ingest config: CoboPubKeys: %w", err)
	}
	s := &Service{cfg: cfg, served: make(chan error, 2)}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.publicLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	if s.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", cfg.AdminListen, err)
	}

	conn := natsconn.Options{URL: cfg.NATSURL, Name: "paystream-ingest", Logger: cfg.Logger, Extra: cfg.NATSOptions, ConnectWait: cfg.NATSConnectWait}
	if cfg.NATSURL == "" {
		if s.creds, err = natsembed.LoadOrCreateCredentials(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		s.embedded, err = natsembed.Start(natsembed.Config{
			Listen: cfg.NATSListen, StoreDir: cfg.DataDir, Credentials: s.creds,
			TLSCert: cfg.NATSListenTLSCert, TLSKey: cfg.NATSListenTLSKey, SyncInterval: cfg.StoreSync,
		})
		if err != nil {
			return nil, err
		}
		// In-process, as the deployed ingest user: the embedded server
		// enforces the same permissions as a cluster.
		conn.InProcess = s.embedded
		conn.Extra = s.creds.Login(natsembed.UserIngest)
		cfg.Logger.Info().Str("nats_listen", cfg.NATSListen).Str("data_dir", cfg.DataDir).
			Str("credentials", natsembed.CredentialsDir(cfg.DataDir)).Bool("tls", cfg.NATSListenTLSCert != "").
			Str("store_sync", StoreSyncString(cfg.StoreSync)).Msg("embedded JetStream started")
	}
	if s.nc, err = natsconn.Connect(ctx, conn); err != nil {
		return nil, err
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	stream := cfg.Stream
	stream.Logger = cfg.Logger
	if _, err = events.EnsureEventStream(ctx, s.js, stream); err != nil {
		return nil, err
	}
	orders := &orderReader{js: s.js}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := events.NewPublisher(s.js)
	if cfg.groupCommit() {
		if s.group, err = events.NewGroupCommitter(s.js, events.StreamName, events.GroupConfig{Logger: cfg.Logger}); err != nil {
			return nil, err
		}
		store = events.NewGroupPublisher(s.group)
		registerGroupMetrics(reg, s.group)
	}
	wh, err := webhook.NewHandler(webhook.Config{
		Verifier:     verifier,
		Store:        store,
		StoreTimeout: cfg.StoreTimeout,
		MaxSkew:      cfg.MaxSkew,
		MaxInFlight:  cfg.MaxInFlight,
		Logger:       cfg.Logger,
		Metrics:      webhook.NewMetrics(reg),
	})
	if err != nil {
		return nil, err
	}
	pub := mux.NewRouter()
	pub.Handle(WebhookPath, wh)
	pub.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}).Methods(http.MethodGet)
	pub.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteError(w, fmt.Errorf("not found: %w", domain.ErrNotFound))
	})

	s.public = httpapi.NewServer(pub)
	s.admin = httpapi.NewServer(admin.NewRouter(admin.Config{
		Orders:   orders,
		Ready:    s.ready,
		Gatherer: reg,
		Token:    cfg.AdminToken,
		Pprof:    cfg.Pprof,
	}))
	go func() { s.served <- serve(s.public, s.publicLn) }()
	go func() { s.served <- serve(s.admin, s.adminLn) }()
	cfg.Logger.Info().Str("listen", s.PublicAddr()).Str("admin_listen", s.AdminAddr()).Int("trusted_keys", len(cfg.TrustedKeys())).
		Bool("group_commit", s.group != nil).Msg("ingest started")
	return s, nil
}

// orderReader reads order state for the admin API. It binds to the orders
// bucket on first use and never creates it: the workers own the bucket, so
// ingest needs only read permissions on it (deploy/nats/accounts.conf), and
// until a worker has created it no order exists.
type orderReader struct {
	js    jetstream.JetStream
	mu    sync.Mutex
	store *events.OrderStore
}

// Get implements admin.OrderReader.
func (r *orderReader) Get(ctx context.Context, orderID string) (*domain.Order, uint64, error) {
	r.mu.Lock()
	store := r.store
	r.mu.Unlock()
	if store == nil {
		kv, err := r.js.KeyValue(ctx, events.OrdersBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, 0, fmt.Errorf("order %s: bucket %s does not exist yet: %w", orderID, events.OrdersBucket, domain.ErrNotFound)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("open bucket %s: %w", events.OrdersBucket, err)
		}
		store = events.NewOrderStore(kv)
		r.mu.Lock()
		r.store = store
		r.mu.Unlock()
	}
	return store.Get(ctx, orderID)
}

// registerGroupMetrics exposes the group committer's counters.
func registerGroupMetrics(reg prometheus.Registerer, g *events.GroupCommitter) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "paystream_ingest_store_batches_total", Help: "Atomic batches of webhooks committed with one store sync.",
		}, func() float64 { b, _, _ := g.Stats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "paystream_ingest_store_batched_total", Help: "Webhooks stored as part of an atomic batch.",
		}, func() float64 { _, m, _ := g.Stats(); return float64(m) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "paystream_ingest_store_batch_fallbacks_total", Help: "Atomic batches refused (an event already stored, or the stream lacks allow_atomic) and stored one by one instead.",
		}, func() float64 { _, _, f := g.Stats(); return float64(f) }),
	)
}

func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Service) ready(ctx context.Context) error {
	if s.nc.Status() != nats.CONNECTED {
		return fmt.Errorf("nats is %s", s.nc.Status())
	}
	if _, err := s.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return nil
}

// PublicAddr is the bound webhook address.
func (s *Service) PublicAddr() string { return s.publicLn.Addr().String() }

// AdminAddr is the bound admin address.
func (s *Service) AdminAddr() string { return s.adminLn.Addr().String() }

// NATSURL is the embedded server's client URL, or "" when NATS is remote.
func (s *Service) NATSURL() string {
	if s.embedded == nil {
		return ""
	}
	return s.embedded.ClientURL()
}

// Credentials are the embedded server's user passwords, or nil when NATS
// is remote. The files of natsembed.FileUsers hold the same.
func (s *Service) Credentials() natsembed.Credentials { return s.creds }

// Done reports a listener that failed while serving.
func (s *Service) Done() <-chan error { return s.served }

// Shutdown stops accepting requests, lets in-flight ones finish until ctx
// ends, then drains NATS and stops the embedded server. Calling it again
// does nothing.
func (s *Service) Shutdown(ctx context.Context) error {
	var errs []error
	s.closing.Do(func() {
		for _, srv := range []*http.Server{s.public, s.admin} {
			if err := srv.Shutdown(ctx); err != nil {
				errs = append(errs, err)
				_ = srv.Close()
			}
		}
		s.close()
	})
	return errors.Join(errs...)
}

func (s *Service) close() {
	for _, ln := range []net.Listener{s.publicLn, s.adminLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	if s.group != nil {
		// After the listeners stopped: no webhook waits on it any more.
		s.group.Close()
	}
	natsconn.Drain(s.nc, natsconn.DefaultDrainWait)
	if s.embedded != nil {
		s.embedded.Shutdown()
		s.embedded.WaitForShutdown()
	}
}

// Run starts the service and serves until ctx is done, then shuts down,
// giving in-flight requests up to grace.
func Run(ctx context.Context, cfg Config, grace time.Duration) error {
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-s.Done():
	}
	cfg.Logger.Info().Msg("ingest stopping")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	return errors.Join(serveErr, s.Shutdown(sctx))
}
