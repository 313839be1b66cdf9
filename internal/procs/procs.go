// Package procs runs paystream's binaries as child processes for the demo
// and the benchmark runner: each in its own process group with its output
// in a log file, stopped softly (SIGINT) and then hard.
package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a started child process.
type Proc struct {
	// Name identifies the process, e.g. "worker-2".
	Name string
	// Log is the file receiving its stdout and stderr.
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs bin with args, writing its output to logPath. It fails if
// the process cannot start or exits within settle (a busy port, a bad
// flag), so callers learn about it at once.
func Start(name, bin string, args []string, logPath string, settle time.Duration) (*Proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("log for %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a terminal's Ctrl-C reaches only the parent,
	// which stops children in order instead of all at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	select {
	case <-p.done:
		return nil, fmt.Errorf("%s exited at start; see %s", name, logPath)
	case <-time.After(settle):
		return p, nil
	}
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop interrupts the process and waits up to grace, then kills it.
func (p *Proc) Stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// RSS returns the process's resident set size in bytes, read from
// /proc/<pid>/status (Linux).
func (p *Proc) RSS() (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.PID()), "status"))
	if err != nil {
		return 0, fmt.Errorf("rss of %s: %w", p.Name, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss of %s: parse %q: %w", p.Name, line, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("rss of %s: no VmRSS line", p.Name)
}

// CPU returns the user plus system CPU time the process has used so far.
func (p *Proc) CPU() (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.PID()), "stat"))
	if err != nil {
		return 0, fmt.Errorf("cpu of %s: %w", p.Name, err)
	}
	d, err := statCPU(b)
	if err != nil {
		return 0, fmt.Errorf("cpu of %s: %w", p.Name, err)
	}
	return d, nil
}

// statCPU reads utime+stime from the text of /proc/<pid>/stat.
func statCPU(stat []byte) (time.Duration, error) {
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after its last closing parenthesis are fixed: utime and stime
	// are the 12th and 13th of them.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat %q", stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat %q", stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %q: %w", s, err)
		}
		ticks += n
	}
	// Linux reports them in USER_HZ, which is 100 on every architecture Go
	// supports there (the kernel ABI fixes it, whatever CONFIG_HZ is).
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// Kill ends the process with SIGKILL, as a crash would, with no chance
// to clean up, and waits until it has exited.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}
