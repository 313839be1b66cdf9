package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// readEnvFile parses NAME=value lines as docker --env-file does.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		require.True(t, ok, "line %q", line)
		env[name] = value
	}
	require.NoError(t, sc.Err())
	return env
}

// TestSecretsFitTheNATSConfigs loads the committed deploy/nats node
// configs with the generated environment, as a nats-server would, and
// checks that each client's password file matches the hash its server
// gets.
func TestSecretsFitTheNATSConfigs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	written, err := Generate(dir, Options{RouteHosts: []string{"n1", "n2", "n3"}, Sandbox: true, BcryptCost: bcrypt.MinCost})
	require.NoError(t, err)
	require.Contains(t, written, CoboAPISecret)

	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "only the owner may enter the directory")

	env := readEnvFile(t, filepath.Join(dir, NATSServerEnv))
	for name, value := range env {
		t.Setenv(name, value)
	}
	for _, node := range []string{"n1", "n2", "n3"} {
		opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "nats", node+".conf"))
		require.NoError(t, err, "deploy/nats/%s.conf with the generated environment", node)
		require.Equal(t, node, opts.ServerName)
		require.Len(t, opts.Routes, 3)
		for i, r := range opts.Routes {
			require.Equal(t, []string{"n1", "n2", "n3"}[i]+":6222", r.Host)
			pw, _ := r.User.Password()
			require.NoError(t, bcrypt.CompareHashAndPassword([]byte(opts.Cluster.Password), []byte(pw)), "route password matches the route user's hash")
		}
		users := map[string]string{}
		for _, u := range opts.Users {
			users[u.Username] = u.Password
		}
		for _, user := range NATSUsers {
			pw, err := os.ReadFile(filepath.Join(dir, PasswordFile(user)))
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(users[user], "$2a$"), "%s: the server gets a bcrypt hash, got %.8q", user, users[user])
			require.NoError(t, bcrypt.CompareHashAndPassword([]byte(users[user]), []byte(strings.TrimSpace(string(pw)))), "%s: password file matches the server's hash", user)
		}
	}
}

func TestGenerateKeepsExistingSecretsUnlessForced(t *testing.T) {
	dir := t.TempDir()
	opts := Options{RouteHosts: []string{"nats-0.nats", "nats-1.nats", "nats-2.nats"}, BcryptCost: bcrypt.MinCost}
	_, err := Generate(dir, opts)
	require.NoError(t, err)
	before, err := os.ReadFile(filepath.Join(dir, PasswordFile("ingest")))
	require.NoError(t, err)

	_, err = Generate(dir, opts)
	require.ErrorContains(t, err, "already exists")
	again, err := os.ReadFile(filepath.Join(dir, PasswordFile("ingest")))
	require.NoError(t, err)
	require.Equal(t, before, again, "a refused run changes nothing")

	opts.Force = true
	_, err = Generate(dir, opts)
	require.NoError(t, err)
	after, err := os.ReadFile(filepath.Join(dir, PasswordFile("ingest")))
	require.NoError(t, err)
	require.NotEqual(t, before, after)
	require.Contains(t, readEnvFile(t, filepath.Join(dir, NATSServerEnv))["PAYSTREAM_NATS_ROUTES"], "@nats-2.nats:6222")

	_, err = Generate(t.TempDir(), Options{RouteHosts: []string{"n1"}})
	require.ErrorContains(t, err, "want the 3 NATS nodes")
}
