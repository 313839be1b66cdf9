package demo

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeBin writes shell scripts standing in for the binaries.
func fakeBin(t *testing.T, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range scripts {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o700))
	}
	return dir
}

// TestStartFailureNamesTheProcessError: a process that exits at start,
// or before it is ready, or while the demo runs, fails the demo with its
// own last error line, not only the name of its log.
func TestStartFailureNamesTheProcessError(t *testing.T) {
	t.Parallel()
	bin := fakeBin(t, map[string]string{
		"ingest": `echo '{"level":"info","message":"starting"}'
echo 'ingest: listen tcp 127.0.0.1:8080: bind: address already in use' >&2
exit 1
`,
		"worker": `echo '{"level":"error","error":"nats: no servers available for connection","message":"connect to nats"}'
sleep 1
echo 'worker: connect to nats "nats://127.0.0.1:4222": nats: no servers available for connection' >&2
exit 1
`,
		"sandbox": `sleep 1
echo '{"level":"fatal","message":"payer: bad config"}'
exit 1
`,
	})
	f := &fleet{bin: bin, dir: t.TempDir(), client: &http.Client{Timeout: time.Second}}
	t.Cleanup(f.stopAll)

	_, err := f.start("ingest")
	require.EqualError(t, err, "ingest did not start: ingest: listen tcp 127.0.0.1:8080: bind: address already in use; "+
		"another process holds the port: -base-port N moves every port of the demo (log: "+f.logPath("ingest")+")")

	w, err := f.start("worker-1")
	require.NoError(t, err, "still running after the settle time")
	begin := time.Now()
	err = f.waitReady(context.Background(), w, "http://127.0.0.1:1/readyz")
	require.EqualError(t, err, `worker-1 exited: worker: connect to nats "nats://127.0.0.1:4222": nats: no servers available for connection (log: `+f.logPath("worker-1")+")")
	require.Less(t, time.Since(begin), readyTimeout/2, "an exit ends the wait at once")

	f.procs = nil
	_, err = f.start("sandbox")
	require.NoError(t, err)
	require.NoError(t, f.exited(), "running")
	require.Eventually(t, func() bool { return f.exited() != nil }, 5*time.Second, 50*time.Millisecond)
	require.ErrorContains(t, f.exited(), "sandbox exited: payer: bad config (log: ")
}

// TestStartFailureWithoutErrorLine: with nothing in its log, the error
// still names the process and its log.
func TestStartFailureWithoutErrorLine(t *testing.T) {
	t.Parallel()
	f := &fleet{bin: fakeBin(t, map[string]string{"ingest": "exit 3\n"}), dir: t.TempDir(), client: http.DefaultClient}
	_, err := f.start("ingest")
	require.ErrorContains(t, err, "ingest did not start: ingest exited at start")
	require.ErrorContains(t, err, "(log: "+f.logPath("ingest")+")")
}
