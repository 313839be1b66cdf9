package natsembed_test

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/natsembed"
)

func TestCredentialsAreKeptAndGuarded(t *testing.T) {
	dir := t.TempDir()
	first, err := natsembed.LoadOrCreateCredentials(dir)
	require.NoError(t, err)
	again, err := natsembed.LoadOrCreateCredentials(dir)
	require.NoError(t, err)
	for _, u := range natsembed.FileUsers {
		require.Equal(t, first[u], again[u], "%s keeps its password across starts", u)
	}
	require.NotEqual(t, first[natsembed.UserSys], again[natsembed.UserSys], "sys is new at every start")
	for _, u := range natsembed.Users {
		require.Len(t, again[u], 48, u)
	}

	// A password file others may read is refused, not trusted.
	require.NoError(t, os.Chmod(natsembed.PasswordFile(dir, natsembed.UserWorker), 0o644))
	_, err = natsembed.LoadOrCreateCredentials(dir)
	require.ErrorContains(t, err, "others may read it")
	require.NoError(t, os.Chmod(natsembed.PasswordFile(dir, natsembed.UserWorker), 0o600))

	require.NoError(t, os.WriteFile(natsembed.PasswordFile(dir, natsembed.UserAdmin), []byte("\n"), 0o600))
	_, err = natsembed.LoadOrCreateCredentials(dir)
	require.ErrorContains(t, err, "letters and digits only")
}

func TestServerRefusesAUserWithoutPassword(t *testing.T) {
	creds, err := natsembed.LoadOrCreateCredentials(t.TempDir())
	require.NoError(t, err)
	delete(creds, natsembed.UserOperator)
	_, err = natsembed.Start(natsembed.Config{StoreDir: t.TempDir(), Credentials: creds})
	require.ErrorContains(t, err, "no password for user operator")
}

func TestServerSyncsEveryWriteUnlessToldOtherwise(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	require.True(t, srv.JetStreamConfig().SyncAlways, "fsync before acknowledging, by default")

	lazy, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir(), SyncInterval: time.Minute})
	require.NoError(t, err)
	t.Cleanup(lazy.Shutdown)
	require.False(t, lazy.JetStreamConfig().SyncAlways)
	require.Equal(t, time.Minute, lazy.JetStreamConfig().SyncInterval)
}
