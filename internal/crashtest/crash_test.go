// Package crashtest kills ingest, with the embedded JetStream server it
// holds, with SIGKILL while webhooks are being answered, and checks that
// every webhook answered 200 survives the restart.
package crashtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/testutil"
)

// The child process is this test binary, started again with these
// variables set: it then runs ingest instead of the tests.
const (
	envChild   = "PAYSTREAM_CRASHTEST_INGEST"
	envDataDir = "PAYSTREAM_CRASHTEST_DATA_DIR"
	envListen  = "PAYSTREAM_CRASHTEST_LISTEN"
	envAdmin   = "PAYSTREAM_CRASHTEST_ADMIN"
	envNATS    = "PAYSTREAM_CRASHTEST_NATS"
	envPubKey  = "PAYSTREAM_CRASHTEST_PUBKEY"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		err := ingest.Run(context.Background(), ingest.Config{
			Listen: os.Getenv(envListen), AdminListen: os.Getenv(envAdmin), NATSListen: os.Getenv(envNATS),
			DataDir: os.Getenv(envDataDir), CoboPubKeys: []string{os.Getenv(envPubKey)},
			Logger: zerolog.New(os.Stderr).Level(zerolog.WarnLevel),
		}, time.Second)
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// child is a running ingest process.
type child struct {
	cmd                 *exec.Cmd
	listen, admin, nats string
}

func startChild(t *testing.T, dir string, signer *testutil.Signer) *child {
	t.Helper()
	c := &child{listen: testutil.FreePort(t), admin: testutil.FreePort(t), nats: testutil.FreePort(t)}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), envChild+"=1", envDataDir+"="+dir, envListen+"="+c.listen,
		envAdmin+"="+c.admin, envNATS+"="+c.nats, envPubKey+"="+signer.PubHex)
	c.cmd.Stderr = os.Stderr
	require.NoError(t, c.cmd.Start())
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	})
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + c.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		require.True(t, time.Now().Before(deadline), "ingest not ready: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAnsweredWebhooksSurviveSIGKILL sends webhooks from several clients
// until ingest is killed with SIGKILL mid-stream, restarts it on the same
// data dir, and requires every event answered 200 in the stream.
func TestAnsweredWebhooksSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	signer := testutil.NewSigner(t)
	c := startChild(t, dir, signer)

	var (
		mu       sync.Mutex
		answered []string
		next     atomic.Int64
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: 2 * time.Second}
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				id := fmt.Sprintf("crash-%d", next.Add(1))
				body := testutil.OrderEvent(id, "O-"+id, "M1001", "Pending", 100, "0")
				resp, err := client.Do(signer.Request(t, "http://"+c.listen+ingest.WebhookPath, body))
				if err != nil {
					continue // killed: connection refused or reset
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					answered = append(answered, id)
					mu.Unlock()
				}
			}
		})
	}
	// Kill in the middle of the traffic, once a good number is answered.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(answered)
		mu.Unlock()
		if n >= 300 {
			break
		}
		require.True(t, time.Now().Before(deadline), "only %d webhooks answered", n)
		time.Sleep(5 * time.Millisecond)
	}
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGKILL))
	_ = c.cmd.Wait()
	stop.Store(true)
	wg.Wait()
	t.Logf("killed ingest with SIGKILL after %d webhooks answered 200", len(answered))

	c2 := startChild(t, dir, signer)
	stored := storedEventIDs(t, "nats://"+c2.nats, dir)
	for _, id := range answered {
		require.True(t, stored[id], "event %s was answered 200 before the kill but is not stored", id)
	}
}

// storedEventIDs reads every event id in the event stream, as the admin
// user of the embedded server.
func storedEventIDs(t *testing.T, url, dataDir string) map[string]bool {
	t.Helper()
	pw, err := os.ReadFile(natsembed.PasswordFile(dataDir, natsembed.UserAdmin))
	require.NoError(t, err)
	nc, err := nats.Connect(url, nats.UserInfo(natsembed.UserAdmin, strings.TrimSpace(string(pw))), nats.CustomInboxPrefix(natsembed.InboxPrefix(natsembed.UserAdmin)))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamName)
	require.NoError(t, err)
	total := st.CachedInfo().State.Msgs
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	ids := map[string]bool{}
	for uint64(len(ids)) < total {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		var env struct {
			EventID string `json:"event_id"`
		}
		require.NoError(t, json.Unmarshal(msg.Data(), &env))
		ids[env.EventID] = true
	}
	return ids
}
