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
	// Users, when set, replaces the anonymous account with these users.
	Users []*server.User
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
	if cfg.ServerName == "" {
		cfg.ServerName = "paystream-embedded"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		Users:      cfg.Users,
		// NATS's default 1 MB payload limit is below ingest's 1 MiB body
		// limit plus headers: a legal webhook would get 503 forever.
		MaxPayload: MaxPayload,
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
