package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/nats-io/nats.go"
)

// NATSAuth holds the NATS authentication and TLS flags both commands share.
type NATSAuth struct {
	creds, nkey, user, passwordFile, ca, cert, key, inboxPrefix *string
	connectWait                                                 *time.Duration
}

// DefaultConnectWait is how long a process waits for NATS, and for the
// password file ingest writes at its first start, before giving up.
const DefaultConnectWait = 2 * time.Minute

// NATSAuthFlags defines the NATS auth flags on fs.
func NATSAuthFlags(fs *Flags) *NATSAuth {
	return &NATSAuth{
		creds:        fs.String("nats-creds", "PAYSTREAM_NATS_CREDS", "", "NATS credentials file (JWT + nkey seed)"),
		nkey:         fs.String("nats-nkey", "PAYSTREAM_NATS_NKEY", "", "NATS nkey seed file"),
		user:         fs.String("nats-user", "PAYSTREAM_NATS_USER", "", "NATS user name (with -nats-password-file)"),
		passwordFile: fs.String("nats-password-file", "PAYSTREAM_NATS_PASSWORD_FILE", "", "file holding the NATS user's password"),
		ca:           fs.String("nats-ca", "PAYSTREAM_NATS_CA", "", "CA file to verify the NATS servers' TLS certificates"),
		cert:         fs.String("nats-cert", "PAYSTREAM_NATS_CERT", "", "client certificate for NATS mutual TLS"),
		key:          fs.String("nats-key", "PAYSTREAM_NATS_KEY", "", "client key for NATS mutual TLS"),
		connectWait:  fs.Duration("connect-wait", "PAYSTREAM_CONNECT_WAIT", DefaultConnectWait, "how long to wait for NATS (and for -nats-password-file to appear) at start-up, so that processes can start in any order"),
		inboxPrefix:  fs.String("nats-inbox-prefix", "PAYSTREAM_NATS_INBOX_PREFIX", "", "subject prefix of this process's reply inboxes; default _INBOX_<user> with -nats-user (as deploy/nats expects), else _INBOX"),
	}
}

// ConnectWait is -connect-wait.
func (a *NATSAuth) ConnectWait() time.Duration { return *a.connectWait }

// Options turns the flags into connection options. A password file that
// does not exist yet is waited for, up to -connect-wait: on one machine,
// ingest writes it at its first start, and a worker may start first.
func (a *NATSAuth) Options(ctx context.Context, log zerolog.Logger) ([]nats.Option, error) {
	var opts []nats.Option
	n := 0
	if *a.creds != "" {
		opts = append(opts, nats.UserCredentials(*a.creds))
		n++
	}
	if *a.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(*a.nkey)
		if err != nil {
			return nil, fmt.Errorf("-nats-nkey: %w", err)
		}
		opts = append(opts, o)
		n++
	}
	if *a.user != "" {
		if *a.passwordFile == "" {
			return nil, errors.New("-nats-user needs -nats-password-file")
		}
		if err := waitForFile(ctx, *a.passwordFile, *a.connectWait, log); err != nil {
			return nil, fmt.Errorf("-nats-password-file: %w", err)
		}
		pw, err := ReadSecretFile(*a.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("-nats-password-file: %w", err)
		}
		opts = append(opts, nats.UserInfo(*a.user, pw))
		n++
	}
	if n > 1 {
		return nil, errors.New("use one of -nats-creds, -nats-nkey or -nats-user")
	}
	if *a.ca != "" {
		opts = append(opts, nats.RootCAs(*a.ca))
	}
	if (*a.cert == "") != (*a.key == "") {
		return nil, errors.New("-nats-cert and -nats-key go together")
	}
	if *a.cert != "" {
		opts = append(opts, nats.ClientCert(*a.cert, *a.key))
	}
	// Each deployed user may read only its own inboxes (deploy/nats), so
	// a user name implies them unless told otherwise.
	switch {
	case *a.inboxPrefix != "":
		opts = append(opts, nats.CustomInboxPrefix(*a.inboxPrefix))
	case *a.user != "":
		opts = append(opts, nats.CustomInboxPrefix("_INBOX_"+*a.user))
	}
	return opts, nil
}

// Refused explains err in one line naming the flags when the NATS server
// refused the credentials; other errors are returned as they are.
func (a *NATSAuth) Refused(err error) error {
	if !errors.Is(err, nats.ErrAuthorization) {
		return err
	}
	who := "no credentials"
	switch {
	case *a.user != "":
		who = fmt.Sprintf("user %q with the password in %s (-nats-user, -nats-password-file)", *a.user, *a.passwordFile)
	case *a.creds != "":
		who = fmt.Sprintf("the credentials in %s (-nats-creds)", *a.creds)
	case *a.nkey != "":
		who = fmt.Sprintf("the nkey in %s (-nats-nkey)", *a.nkey)
	}
	return fmt.Errorf("NATS refused %s; against ingest's embedded server use -nats-user worker (or operator) -nats-password-file <ingest -data-dir>/credentials/<user>.password: %w", who, err)
}

// waitForFile returns once path exists, or fails after wait.
func waitForFile(ctx context.Context, path string, wait time.Duration, log zerolog.Logger) error {
	deadline := time.Now().Add(wait)
	for logged := false; ; {
		_, err := os.Stat(path)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return nil // ReadSecretFile reports any other problem
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s does not exist after %s (-connect-wait); ingest writes it under <data-dir>/credentials/ at its first start", path, wait)
		}
		if !logged {
			log.Info().Str("file", path).Msg("waiting for the NATS password file (ingest writes it at its first start)")
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
