package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseStoreSync(t *testing.T) {
	d, err := ParseStoreSync("always")
	require.NoError(t, err)
	require.Zero(t, d)
	d, err = ParseStoreSync("2m")
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, d)
	for _, bad := range []string{"", "0s", "-1s", "sometimes", "Always"} {
		_, err := ParseStoreSync(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "always", StoreSyncString(0))
	require.Equal(t, "2m0s", StoreSyncString(2*time.Minute))
}

// TestEmbeddedServerSyncsAlwaysByDefault: ingest's embedded JetStream
// fsyncs every event before acknowledging it unless told otherwise, so a
// 200 means the event is on disk.
func TestEmbeddedServerSyncsAlwaysByDefault(t *testing.T) {
	for _, c := range []struct {
		sync   time.Duration
		always bool
	}{{0, true}, {30 * time.Second, false}} {
		s, err := Start(context.Background(), Config{
			Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0",
			DataDir: t.TempDir(), CoboEnv: "dev", StoreSync: c.sync,
		})
		require.NoError(t, err)
		js := s.embedded.JetStreamConfig()
		require.Equal(t, c.always, js.SyncAlways, "StoreSync %s", c.sync)
		if !c.always {
			require.Equal(t, c.sync, js.SyncInterval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		require.NoError(t, s.Shutdown(ctx))
		cancel()
	}
}

func TestTrustIsExplicit(t *testing.T) {
	_, err := Start(context.Background(), Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0", DataDir: t.TempDir()})
	require.ErrorContains(t, err, "CoboEnv or CoboPubKeys is required")
}

// Group commit is on by default exactly where it was measured to pay: the
// embedded server syncing every write.
func TestGroupCommitDefault(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  Config
		want bool
	}{
		{Config{}, true},
		{Config{StoreSync: 2 * time.Minute}, false},
		{Config{NATSURL: "nats://n1:4222"}, false},
		{Config{NATSURL: "nats://n1:4222", GroupCommit: GroupCommitOn}, true},
		{Config{GroupCommit: GroupCommitOff}, false},
	} {
		require.Equal(t, c.want, c.cfg.WithDefaults().groupCommit(), "%+v", c.cfg)
	}
	require.ErrorContains(t, Config{CoboEnv: "dev", GroupCommit: "maybe"}.WithDefaults().validate(), "GroupCommit")
}
