package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/loadgen"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestBadFlagsNameTheFlag: each bound of a run is checked, and the error
// names the flag (or the environment variable) at fault.
func TestBadFlagsNameTheFlag(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"no requests":    {args: []string{"-n", "0"}, want: "-n must be positive"},
		"no time":        {args: []string{"-duration", "0s"}, want: "-duration must be positive"},
		"no concurrency": {args: []string{"-concurrency", "0"}, want: "-concurrency must be positive"},
		"negative rate":  {args: []string{"-rate", "-5"}, want: "-rate must not be negative"},
		"bad env":        {env: map[string]string{"LOADGEN_N": "many"}, want: "LOADGEN_N"},
		"stray argument": {args: []string{"fast"}, want: "unexpected arguments"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.ErrorContains(t, run(context.Background(), tc.args, env(tc.env), io.Discard), tc.want)
		})
	}
}

func TestPrintPubKey(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	// -print-pubkey needs no valid run bounds.
	require.NoError(t, run(context.Background(), []string{"-print-pubkey", "-n", "0"}, env(nil), &out))
	require.Equal(t, loadgen.PublicKeyHex(loadgen.KeyFromSeed(loadgen.DefaultSeed))+"\n", out.String())
}

// TestHintWhenIngestRefusesTheKey: a run every answer of which is 401
// prints its summary, then fails naming the key ingest must trust.
func TestHintWhenIngestRefusesTheKey(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	var out bytes.Buffer
	err := run(context.Background(), []string{"-url", srv.URL, "-n", "3", "-concurrency", "1"}, env(nil), &out)
	require.ErrorContains(t, err, "-cobo-pubkey "+loadgen.PublicKeyHex(loadgen.KeyFromSeed(loadgen.DefaultSeed)))
	var res loadgen.Result
	require.NoError(t, json.NewDecoder(strings.NewReader(out.String())).Decode(&res))
	require.Equal(t, int64(3), res.Codes["401"])
}
