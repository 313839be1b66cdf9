package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// TestReconcileCommand runs `worker reconcile` against a real embedded
// server prepared as a worker with rules leaves it, and Cobo's simulator:
// a dry run prints the missing order and changes nothing, a pass repairs
// it (printing what it did), and the next pass finds nothing.
func TestReconcileCommand(t *testing.T) {
	srv := testutil.StartJetStreamAt(t, t.TempDir(), "127.0.0.1:0")
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	stream := events.StreamConfig{}
	_, err := events.EnsureOrdersBucket(ctx, js, stream)
	require.NoError(t, err)
	require.NoError(t, allocation.EnsureResources(ctx, js, stream, time.Minute))
	_, err = reconcile.EnsureBucket(ctx, js, stream)
	require.NoError(t, err)

	seed := make([]byte, 32)
	_, err = rand.Read(seed)
	require.NoError(t, err)
	secret := hex.EncodeToString(seed)
	signer, err := cobo.NewAPISigner(secret)
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: zerolog.Nop()})
	api := httptest.NewServer(sim)
	t.Cleanup(api.Close)
	notLate := false
	o := testutil.CoboOrder("O-cli", "M1001", "Completed", time.Now().Unix(), "102.000001", testutil.CoboTx("t1", "0xt1", "102.000001", &notLate))
	o.CreatedTimestamp = cobo.Int64(time.Now().Add(-time.Minute).Unix())
	sim.PutOrder(o)

	dir := t.TempDir()
	rules, secretFile := filepath.Join(dir, "rules.json"), filepath.Join(dir, "cobo.secret")
	require.NoError(t, os.WriteFile(rules, []byte(`{"splits":[{"merchant_id":"*","destination_account":"M9000","share":"0.05","description":"referral"}],"late_payments":"credit_merchant"}`), 0o600))
	require.NoError(t, os.WriteFile(secretFile, []byte(secret+"\n"), 0o600))
	env := map[string]string{"PAYSTREAM_RULES": rules, "PAYSTREAM_COBO_API_SECRET_FILE": secretFile, "PAYSTREAM_COBO_API_URL": api.URL + "/v2"}
	getenv := func(k string) string { return env[k] }
	reconcileOnce := func(extra ...string) ([]map[string]json.RawMessage, error) {
		var out bytes.Buffer
		err := run(ctx, append([]string{"reconcile", "-nats-url", srv.ClientURL()}, extra...), getenv, &out, io.Discard)
		var lines []map[string]json.RawMessage
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var line map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(l), &line), l)
			lines = append(lines, line)
		}
		return lines, err
	}
	summary := func(line map[string]json.RawMessage) reconcile.Summary {
		var s reconcile.Summary
		require.NoError(t, json.Unmarshal(line["summary"], &s))
		return s
	}

	lines, err := reconcileOnce("-dry-run")
	require.NoError(t, err)
	require.Len(t, lines, 2)
	require.JSONEq(t, `"O-cli"`, string(lines[0]["order_id"]))
	require.JSONEq(t, `"missing"`, string(lines[0]["result"]))
	require.JSONEq(t, `["final_status","transactions"]`, string(lines[0]["missing"]))
	require.Equal(t, 1, summary(lines[1]).Missing)
	require.False(t, summary(lines[1]).PointAdvanced)

	lines, err = reconcileOnce()
	require.NoError(t, err)
	require.Len(t, lines, 2)
	require.JSONEq(t, `"repaired"`, string(lines[0]["result"]))
	require.JSONEq(t, `"Completed"`, string(lines[0]["status_to"]))
	require.JSONEq(t, `["O-cli:split:*:M9000"]`, string(lines[0]["planned"]))
	s := summary(lines[1])
	require.Equal(t, 1, s.Repaired)
	require.True(t, s.PointAdvanced)

	// The planned item was published for the workers' batchers.
	st, err := js.Stream(ctx, allocation.IntentStream)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)

	lines, err = reconcileOnce("-since", "1h")
	require.NoError(t, err)
	require.Len(t, lines, 1, "nothing missing: the summary only")
	require.Equal(t, 1, summary(lines[0]).Checked)
	require.Zero(t, summary(lines[0]).Missing)
}
