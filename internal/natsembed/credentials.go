package natsembed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
)

// The users of deploy/nats/accounts.conf.
const (
	UserIngest   = "ingest"
	UserWorker   = "worker"
	UserOperator = "operator"
	UserAdmin    = "admin"
	UserSys      = "sys"
)

// Users are every user accounts.conf defines; each needs a password.
var Users = []string{UserIngest, UserWorker, UserOperator, UserAdmin, UserSys}

// FileUsers are the users that connect over the network: their passwords
// are kept in files under the data dir for the processes that log in as
// them. The ingest that embeds the server connects in-process, but a
// second ingest may store through it as the ingest user. sys is unused by
// paystream, so its password lives only in memory, new at every start.
var FileUsers = []string{UserIngest, UserWorker, UserOperator, UserAdmin}

// Credentials maps each user to its plaintext password.
type Credentials map[string]string

// CredentialsDir is where the password files of a data dir are.
func CredentialsDir(dataDir string) string { return filepath.Join(dataDir, "credentials") }

// PasswordFile is the file holding user's password under dataDir.
func PasswordFile(dataDir, user string) string {
	return filepath.Join(CredentialsDir(dataDir), user+".password")
}

// InboxPrefix is the reply-inbox prefix user may subscribe to under
// accounts.conf.
func InboxPrefix(user string) string { return "_INBOX_" + user }

// LoadOrCreateCredentials returns the passwords of every user: those of
// FileUsers read from their files under dataDir, each created with a new
// random password (mode 0600, in a 0700 directory) when missing, so that
// they stay the same across restarts; the others random and new. A file
// that others may read or that is empty is refused rather than trusted.
func LoadOrCreateCredentials(dataDir string) (Credentials, error) {
	dir := CredentialsDir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("credentials dir: %w", err)
	}
	creds := Credentials{}
	for _, u := range Users {
		pw, err := newPassword()
		if err != nil {
			return nil, err
		}
		creds[u] = pw
	}
	for _, u := range FileUsers {
		path := PasswordFile(dataDir, u)
		pw, err := readPassword(path)
		if errors.Is(err, fs.ErrNotExist) {
			err = writePassword(path, creds[u])
			if errors.Is(err, fs.ErrExist) {
				// Another start wrote it first: use that one.
				pw, err = readPassword(path)
			} else {
				pw = creds[u]
			}
		}
		if err != nil {
			return nil, err
		}
		creds[u] = pw
	}
	return creds, nil
}

func newPassword() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random password: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func readPassword(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("password file %s has mode %s: others may read it; chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if !isToken(pw) {
		return "", fmt.Errorf("password file %s: want letters and digits only, and not empty", path)
	}
	return pw, nil
}

func writePassword(path, pw string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create password file: %w", err)
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		_ = f.Close()
		return fmt.Errorf("write password file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("sync password file %s: %w", path, err)
	}
	return f.Close()
}

// Login returns the client options that log in as user, with the reply
// inboxes accounts.conf lets that user read.
func (c Credentials) Login(user string) []nats.Option {
	return []nats.Option{nats.UserInfo(user, c[user]), nats.CustomInboxPrefix(InboxPrefix(user))}
}
