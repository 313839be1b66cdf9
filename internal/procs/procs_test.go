package procs

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis, utime 250 and stime 31.
	stat := []byte("4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 31 0 0 20 0 9 0 100 1000000 500 18446744073709551615")
	d, err := statCPU(stat)
	require.NoError(t, err)
	require.Equal(t, 2810*time.Millisecond, d)

	_, err = statCPU([]byte("4242 (cmd) S 1 2"))
	require.ErrorContains(t, err, "unexpected /proc stat")
	_, err = statCPU([]byte("no parenthesis"))
	require.Error(t, err)

	// This very process, read the same way.
	self, err := os.ReadFile("/proc/self/stat")
	require.NoError(t, err)
	_, err = statCPU(self)
	require.NoError(t, err)
}

func TestKill(t *testing.T) {
	// A shell that ignores SIGINT: Stop would wait its grace, Kill does not.
	p, err := Start("stubborn", "/bin/sh", []string{"-c", `trap "" INT; exec sleep 30`}, t.TempDir()+"/stubborn.log", 50*time.Millisecond)
	require.NoError(t, err)
	start := time.Now()
	p.Kill()
	select {
	case <-p.Done():
	default:
		t.Fatal("Kill returned before the process exited")
	}
	require.Less(t, time.Since(start), 5*time.Second)
}
