package demo

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func writeLog(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proc.log")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// TestLastErrorLine: the line reported for a failed process is its own
// last error, whatever form it took.
func TestLastErrorLine(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ log, want string }{
		"busy port, printed by main on its way out": {
			log: `{"level":"info","service":"ingest","message":"embedded nats server starting"}
{"level":"warn","service":"ingest","message":"no admin token"}
ingest: listen tcp 127.0.0.1:8080: bind: address already in use
`,
			want: "ingest: listen tcp 127.0.0.1:8080: bind: address already in use",
		},
		"a JSON error line with its error": {
			log: `{"level":"error","error":"first","message":"early trouble"}
{"level":"info","message":"retrying"}
{"level":"error","error":"nats: no servers available for connection","message":"connect to nats"}
{"level":"info","message":"stopped"}
`,
			want: "connect to nats: nats: no servers available for connection",
		},
		"fatal without an error field": {
			log:  `{"level":"fatal","message":"cannot open data dir"}` + "\n",
			want: "cannot open data dir",
		},
		"a panic, not its goroutine dump": {
			log: `{"level":"info","message":"started"}
panic: runtime error: invalid memory address or nil pointer dereference
[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a2b3c]

goroutine 1 [running]:
main.run(...)
	/src/cmd/worker/main.go:42 +0x1c
exit status 2
`,
			want: "panic: runtime error: invalid memory address or nil pointer dereference",
		},
		"a bad flag, after the usage text": {
			log: `flag provided but not defined: -nope
Usage of worker:
  -nats-url string
    	NATS server list (env PAYSTREAM_NATS_URL)
worker: flag provided but not defined: -nope
`,
			want: "worker: flag provided but not defined: -nope",
		},
		"nothing but info": {log: `{"level":"info","message":"ok"}` + "\n", want: ""},
		"empty":            {log: "", want: ""},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, lastErrorLine(writeLog(t, tc.log)))
		})
	}
	require.Empty(t, lastErrorLine(filepath.Join(t.TempDir(), "missing.log")), "no log yet")
}

func TestCompletedOrderID(t *testing.T) {
	t.Parallel()
	path := writeLog(t, `{"level":"info","message":"order updated","order_id":"O1"}
not json
{"level":"info","message":"order completed","order_id":"O20261122-M1003-906040002"}
{"level":"info","message":"order completed","order_id":"O3"}
`)
	require.Equal(t, "O20261122-M1003-906040002", completedOrderID(path))
	require.Empty(t, completedOrderID(writeLog(t, `{"level":"info","message":"order updated","order_id":"O1"}`)))
	require.Empty(t, completedOrderID(filepath.Join(t.TempDir(), "missing.log")))
}
