// Package natsembed runs a JetStream-enabled NATS server inside the process,
// for single-machine deployments, the demo and tests.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	deploynats "github.com/paystream/paystream/deploy/nats"
)

// Config configures an embedded server.
type Config struct {
	// Listen is host:port for client connections. Empty means no TCP
	// listener: only in-process clients can connect.
	Listen string
	// StoreDir is where JetStream keeps its files. Required.
	StoreDir string
	// ServerName names the server; it must be stable across restarts for
	// JetStream to find its state.
	ServerName string
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
	// Cluster, when set, joins the server to a cluster.
	Cluster *ClusterConfig
	// Credentials, when set, gives the server the accounts, users and
	// permissions of deploy/nats/accounts.conf with these passwords, and
	// refuses every other client. Without it the server admits anyone,
	// which only tests that need a bare server should want.
	Credentials Credentials
	// TLSCert and TLSKey, when set, make the client listener require TLS
	// with this certificate.
	TLSCert, TLSKey string
	// SyncInterval, when positive, lets JetStream fsync its files only
	// this often, acknowledging writes before they are on disk: an OS
	// crash or power loss then loses what was acknowledged since the last
	// sync. Zero, the default, fsyncs every write before acknowledging it.
	SyncInterval time.Duration
}

// ClusterConfig joins an embedded server to a cluster.
type ClusterConfig struct {
	Name   string
	Listen string
	Routes []string
}

// MaxPayload is the embedded server's message size limit: room for a
// 1 MiB webhook body and its headers. deploy/nats sets the same.
const MaxPayload = 2 << 20

// Start starts a server and waits until it accepts connections.
func Start(cfg Config) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("embedded nats: StoreDir is required")
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("embedded nats: TLSCert and TLSKey go together")
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "paystream-embedded"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	opts := &server.Options{}
	if cfg.Credentials != nil {
		var err error
		if opts, err = accountsOptions(cfg.Credentials); err != nil {
			return nil, err
		}
	}
	opts.ServerName = cfg.ServerName
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	// A 200 to Cobo must mean the event is on disk: Cobo never resends an
	// event it was answered 200 for.
	opts.SyncAlways = cfg.SyncInterval <= 0
	if cfg.SyncInterval > 0 {
		opts.SyncInterval = cfg.SyncInterval
	}
	opts.NoSigs = true
	opts.NoLog = true
	// NATS's default 1 MB payload limit is below ingest's 1 MiB body
	// limit plus headers: a legal webhook would get 503 forever.
	opts.MaxPayload = MaxPayload
	if cfg.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey})
		if err != nil {
			return nil, fmt.Errorf("embedded nats: TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSTimeout = tc, true, 2
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: Listen: %w", err)
		}
		opts.Host, opts.Port = host, port
	}
	if c := cfg.Cluster; c != nil {
		host, port, err := splitHostPort(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: Cluster.Listen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: port}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after %s (is %q free?)", cfg.ReadyTimeout, cfg.Listen)
	}
	return srv, nil
}

// accountsOptions parses deploy/nats/accounts.conf with the passwords of
// creds defined in front of it, where the cluster's servers take them
// from their environment. A user without a password fails here, so the
// embedded server never starts with a user that anyone could log in as.
func accountsOptions(creds Credentials) (*server.Options, error) {
	var b strings.Builder
	for _, u := range Users {
		pw := creds[u]
		if pw == "" {
			return nil, fmt.Errorf("embedded nats: no password for user %s", u)
		}
		if !isToken(pw) {
			return nil, fmt.Errorf("embedded nats: the password of user %s must be letters and digits", u)
		}
		fmt.Fprintf(&b, "%s: %q\n", PasswordVar(u), pw)
	}
	b.WriteString(deploynats.Accounts)
	opts := &server.Options{}
	if err := opts.ProcessConfigString(b.String()); err != nil {
		return nil, fmt.Errorf("embedded nats: deploy/nats/accounts.conf: %w", err)
	}
	return opts, nil
}

// PasswordVar is the configuration variable holding user's password in
// deploy/nats/accounts.conf.
func PasswordVar(user string) string {
	return "PAYSTREAM_NATS_" + strings.ToUpper(user) + "_PASSWORD"
}

func isToken(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}
