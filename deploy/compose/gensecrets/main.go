// Command gensecrets writes the secrets a paystream deployment needs into
// one directory: the NATS users' passwords (plaintext, for the clients),
// the environment of the NATS servers (bcrypt hashes and route URLs, as
// deploy/nats/README.md describes), and the admin and metrics tokens.
// With -sandbox it also writes the keys the compose stack's sandbox and
// workers share (a Cobo API secret, a BitGo token and signing key).
//
//	go run ./deploy/compose/gensecrets                    # deploy/compose/secrets, routes to n1..n3
//	go run ./deploy/compose/gensecrets -out /tmp/ps -route-hosts nats-0.nats,nats-1.nats,nats-2.nats
//
// deploy/compose/compose.yaml mounts the files as Docker secrets; the
// README's "Deploying" section turns them into Kubernetes Secrets.
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// File names written by Generate.
const (
	NATSServerEnv   = "nats-server.env"
	AdminToken      = "admin-token"
	MetricsToken    = "metrics-token"
	CoboAPISecret   = "cobo-api-secret"
	BitGoToken      = "bitgo-token"
	BitGoSigningKey = "bitgo-signing-key"
)

// NATSUsers are the users of deploy/nats/accounts.conf with a password
// file for clients (nats-<user>.password), and the route user, whose
// password only appears inside PAYSTREAM_NATS_ROUTES.
var (
	NATSUsers = []string{"ingest", "worker", "operator", "admin", "sys"}
	routeUser = "route"
)

// PasswordFile is the name of user's plaintext password file.
func PasswordFile(user string) string { return "nats-" + user + ".password" }

// DefaultBcryptCost is the cost deploy/nats/README.md uses.
const DefaultBcryptCost = 11

// Options says what Generate writes.
type Options struct {
	// RouteHosts are the NATS nodes' host names as the nodes reach each
	// other on the route port 6222 (n1, n2, n3 in the compose stack).
	RouteHosts []string
	// Sandbox adds the Cobo API secret and the BitGo token and signing key
	// that the sandbox and the workers share.
	Sandbox bool
	// Force replaces files that exist; without it Generate refuses to
	// touch a directory holding any of them, since the passwords and the
	// servers' hashes must come from one run.
	Force bool
	// BcryptCost is the cost of the servers' hashes; zero means 11, what
	// deploy/nats/README.md uses.
	BcryptCost int
}

func main() {
	out := flag.String("out", filepath.Join("deploy", "compose", "secrets"), "directory to write the secrets to (created mode 0700)")
	hosts := flag.String("route-hosts", "n1,n2,n3", "comma-separated host names of the three NATS nodes, as they reach each other on port 6222")
	sandbox := flag.Bool("sandbox", true, "also write the Cobo API secret and BitGo token and key the compose stack's sandbox checks (test keys)")
	force := flag.Bool("force", false, "replace existing secrets (every process must then be given the new ones)")
	cost := flag.Int("bcrypt-cost", DefaultBcryptCost, "bcrypt cost of the NATS servers' password hashes")
	flag.Parse()
	written, err := Generate(*out, Options{RouteHosts: splitList(*hosts), Sandbox: *sandbox, Force: *force, BcryptCost: *cost})
	if err != nil {
		fmt.Fprintln(os.Stderr, "gensecrets:", err)
		os.Exit(1)
	}
	report(os.Stdout, *out, written)
}

func report(w io.Writer, dir string, written []string) {
	fmt.Fprintf(w, "wrote %d secrets to %s/:\n", len(written), dir)
	for _, name := range written {
		fmt.Fprintln(w, "  "+name)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Generate writes fresh secrets into dir and returns the names written.
// dir is created with mode 0700; the files in it are 0644 so that the
// unprivileged processes of the containers can read them where Docker
// Compose bind-mounts them as secrets (it keeps the host's owner and
// mode), while the directory keeps other users of the host out. It
// refuses a directory that already holds any of the files unless
// opts.Force is set.
func Generate(dir string, opts Options) ([]string, error) {
	if len(opts.RouteHosts) != 3 {
		return nil, fmt.Errorf("route hosts: want the 3 NATS nodes, got %d (%q)", len(opts.RouteHosts), opts.RouteHosts)
	}
	cost := opts.BcryptCost
	if cost == 0 {
		cost = DefaultBcryptCost
	}
	files := map[string]string{}
	var order []string
	add := func(name, content string) {
		files[name] = content
		order = append(order, name)
	}

	hashes := map[string]string{}
	for _, user := range append(slices.Clone(NATSUsers), routeUser) {
		pw, err := randomHex(24)
		if err != nil {
			return nil, err
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			return nil, fmt.Errorf("bcrypt %s password: %w", user, err)
		}
		hashes[user] = string(hash)
		if user == routeUser {
			var routes []string
			for _, h := range opts.RouteHosts {
				routes = append(routes, fmt.Sprintf("nats-route://%s:%s@%s:6222", routeUser, pw, h))
			}
			hashes["routes"] = "[" + strings.Join(routes, ", ") + "]"
			continue
		}
		add(PasswordFile(user), pw+"\n")
	}
	add(NATSServerEnv, serverEnv(hashes))

	for _, name := range []string{AdminToken, MetricsToken} {
		tok, err := randomHex(32)
		if err != nil {
			return nil, err
		}
		add(name, tok+"\n")
	}
	if opts.Sandbox {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, fmt.Errorf("generate Cobo API secret: %w", err)
		}
		add(CoboAPISecret, hex.EncodeToString(seed)+"\n")
		for _, name := range []string{BitGoToken, BitGoSigningKey} {
			v, err := randomHex(32)
			if err != nil {
				return nil, err
			}
			add(name, v+"\n")
		}
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chmod %s: %w", dir, err)
	}
	if !opts.Force {
		for _, name := range order {
			_, err := os.Stat(filepath.Join(dir, name))
			if err == nil {
				return nil, fmt.Errorf("%s already exists; keep the secrets you have, or pass -force to replace them all", filepath.Join(dir, name))
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("check %s: %w", name, err)
			}
		}
	}
	for _, name := range order {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(files[name]), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		// WriteFile keeps the mode of a file that exists (-force).
		if err := os.Chmod(path, 0o644); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return order, nil
}

// serverEnv is the NATS servers' environment in the format of
// `docker --env-file`, `kubectl create secret --from-env-file` and
// systemd's EnvironmentFile=: NAME=value, no quotes, values literal.
func serverEnv(hashes map[string]string) string {
	var b strings.Builder
	b.WriteString("# Environment of every nats-server of deploy/nats (bcrypt hashes and route URLs).\n")
	for _, user := range append(slices.Clone(NATSUsers), routeUser) {
		fmt.Fprintf(&b, "PAYSTREAM_NATS_%s_PASSWORD=%s\n", strings.ToUpper(user), hashes[user])
	}
	fmt.Fprintf(&b, "PAYSTREAM_NATS_ROUTES=%s\n", hashes["routes"])
	return b.String()
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random bytes: %w", err)
	}
	return hex.EncodeToString(b), nil
}
