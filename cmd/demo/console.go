package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/paystream/paystream/internal/natsembed"
)

// consoleAddr is where the demo's operator console listens.
const consoleAddr = "127.0.0.1:8082"

// startConsole writes a random admin token, starts `worker console` as the
// operator user with the workers' rules and Cobo API (so that it can
// re-apply), and prints its URL with the token in the fragment: the page
// takes it once into the tab's sessionStorage and removes it from the
// address bar, and a fragment never reaches a server or a log.
func (d *demo) startConsole(ctx context.Context, webhookKey string, say func(string, ...any)) error {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("generate admin token: %w", err)
	}
	token := hex.EncodeToString(b)
	tokenFile := filepath.Join(d.dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	data := filepath.Join(d.dir, "data")
	if err := d.start("worker-console", "console", "-listen", consoleAddr, "-admin-token-file", tokenFile,
		"-nats-url", "nats://"+natsAddr, "-nats-user", natsembed.UserOperator, "-nats-password-file", natsembed.PasswordFile(data, natsembed.UserOperator),
		"-cobo-pubkey", webhookKey, "-rules", d.rules, "-cobo-api-url", "http://"+sandboxAddr+"/v2", "-cobo-api-secret-file", d.secret,
		"-ingest-admin-url", "http://"+adminAddr, "-refresh", "2s", "-log-level", "warn"); err != nil {
		return err
	}
	if err := waitReady(ctx, "http://"+consoleAddr+"/readyz"); err != nil {
		return fmt.Errorf("console: %w (see %s)", err, d.logPath("worker-console"))
	}
	say("operator console on http://%s/#token=%s (the link logs you in; the token is in %s)", consoleAddr, token, tokenFile)
	return nil
}
