package demo

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/paystream/paystream/internal/procs"
)

// Timings of the demo's processes.
const (
	// startSettle is how long a process must survive to count as started.
	startSettle = 300 * time.Millisecond
	// readyTimeout bounds the wait for a process's /readyz.
	readyTimeout = 20 * time.Second
	// stopGrace is how long a process may take to stop softly.
	stopGrace = 15 * time.Second
)

// fleet runs the demo's processes, the real binaries of bin, each logging
// to dir/<name>.log. When one fails to start or to become ready, the
// error carries that process's own last error line from its log.
type fleet struct {
	bin, dir string
	procs    []*procs.Proc
	client   *http.Client
}

func (f *fleet) logPath(name string) string { return filepath.Join(f.dir, name+".log") }

// output runs binary name with args and returns its trimmed stdout.
func (f *fleet) output(name string, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(f.bin, name), args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// start runs the binary named by name up to its first '-' (worker-2 runs
// worker). It fails when the process cannot start or exits within
// startSettle (a busy port, a bad flag), with its last error line.
func (f *fleet) start(name string, args ...string) (*procs.Proc, error) {
	bin, _, _ := strings.Cut(name, "-")
	p, err := procs.Start(name, filepath.Join(f.bin, bin), args, f.logPath(name), startSettle)
	if err != nil {
		return nil, f.failure(name, "did not start", err)
	}
	f.procs = append(f.procs, p)
	return p, nil
}

// failure is the error for process name that did what, naming its own
// last error line when its log has one, else cause, and the log.
func (f *fleet) failure(name, what string, cause error) error {
	if line := lastErrorLine(f.logPath(name)); line != "" {
		if strings.Contains(line, "address already in use") {
			line += "; another process holds the port: -base-port N moves every port of the demo"
		}
		return fmt.Errorf("%s %s: %s (log: %s)", name, what, line, f.logPath(name))
	}
	return fmt.Errorf("%s %s: %w (log: %s)", name, what, cause, f.logPath(name))
}

// waitReady polls url until it answers 200, for at most readyTimeout. It
// fails at once when p exits, or ctx ends.
func (f *fleet) waitReady(ctx context.Context, p *procs.Proc, url string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		if resp, err := f.client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return f.failure(p.Name, "is not ready", fmt.Errorf("%s did not answer 200 within %s", url, readyTimeout))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return f.failure(p.Name, "exited", fmt.Errorf("exited before %s answered 200", url))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// exited returns the error of the first process that has ended, or nil
// while all run.
func (f *fleet) exited() error {
	for _, p := range f.procs {
		select {
		case <-p.Done():
			return f.failure(p.Name, "exited", fmt.Errorf("exited unexpectedly"))
		default:
		}
	}
	return nil
}

// stopAll stops the sandbox first, then the workers, then ingest, each
// softly (SIGINT), then hard after stopGrace. Calling it again does
// nothing.
func (f *fleet) stopAll() {
	for _, prefix := range []string{"sandbox", "worker", "ingest"} {
		for _, p := range f.procs {
			if strings.HasPrefix(p.Name, prefix) {
				p.Stop(stopGrace)
			}
		}
	}
	f.procs = nil
}
