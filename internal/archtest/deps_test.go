package archtest

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/paystream/paystream"

// rules are what a package must not depend on, directly or not. Only the
// package's own build counts: its tests may import anything.
var rules = []struct {
	pkg string
	// forbidden are import path prefixes.
	forbidden []string
	why       string
}{
	{
		pkg:       module + "/cmd/worker",
		forbidden: []string{module + "/internal/ingest", "github.com/nats-io/nats-server/"},
		why:       "the worker binary links neither ingest's HTTP service nor an embedded NATS server",
	},
	{
		pkg:       module + "/internal/replay",
		forbidden: []string{module + "/internal/worker"},
		why:       "replay runs the apply core, not the worker assembly",
	},
	{
		pkg:       module + "/internal/apply",
		forbidden: []string{module + "/internal/worker", module + "/internal/replay", module + "/internal/reconcile"},
		why:       "the core is what the worker, replay and reconciliation depend on, never the other way round",
	},
	{
		pkg:       module + "/internal/allocation",
		forbidden: []string{module + "/internal/handlers", module + "/internal/apply"},
		why:       "handlers call allocation (Planner), so allocation must not call back",
	},
}

func TestImportRules(t *testing.T) {
	for _, r := range rules {
		t.Run(strings.TrimPrefix(r.pkg, module+"/"), func(t *testing.T) {
			deps := listDeps(t, r.pkg)
			require.Contains(t, deps, r.pkg, "go list names the package itself")
			for _, d := range deps {
				for _, f := range r.forbidden {
					require.False(t, strings.HasPrefix(d, f), "%s depends on %s: %s\n(go list -deps %s, then go mod why -m or go list -f '{{.Imports}}' to find who imports it)", r.pkg, d, r.why, r.pkg)
				}
			}
		})
	}
}

// listDeps runs `go list -deps pkg`: every package pkg's build links.
func listDeps(t *testing.T, pkg string) []string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command runs go list")
	out, err := exec.Command(gobin, "list", "-deps", pkg).Output()
	if exitErr := (*exec.ExitError)(nil); errors.As(err, &exitErr) {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, exitErr.Stderr)
	}
	require.NoError(t, err)
	return strings.Fields(string(out))
}
