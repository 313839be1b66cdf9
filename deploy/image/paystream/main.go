// Command paystream is the container image's entrypoint: the first
// argument names the command to run (ingest, worker or sandbox) and the
// rest are its flags, so that one image runs any of them:
//
//	docker run <image> ingest -cobo-env prod -nats-url ...
//	docker run <image> worker -h
//
// It replaces itself with that command (execve), so the command is the
// container's PID 1 and receives SIGTERM directly: its soft stop is the
// container's stop. It exists because the image has no shell.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Commands are the commands the image holds, in the directory of this
// entrypoint.
var Commands = []string{"ingest", "worker", "sandbox"}

func main() {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "paystream:", err)
		os.Exit(2)
	}
	path, args, err := Resolve(filepath.Dir(self), os.Args[1:])
	if err != nil {
		usage(os.Stderr, err)
		os.Exit(2)
	}
	// Exec only returns on failure.
	err = syscall.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "paystream: exec %s: %v\n", path, err)
	os.Exit(1)
}

// errUsage is returned for -h, --help or no arguments.
var errUsage = errors.New("name the command to run")

// Resolve maps the entrypoint's arguments to the command to execute in
// dir: its path and its argv (argv[0] is the command's name, as a shell
// would pass it). An unknown command, or none, is an error that lists the
// commands.
func Resolve(dir string, args []string) (string, []string, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		return "", nil, errUsage
	}
	name := args[0]
	if !slices.Contains(Commands, name) {
		return "", nil, fmt.Errorf("unknown command %q: want one of %s", name, strings.Join(Commands, ", "))
	}
	return filepath.Join(dir, name), append([]string{name}, args[1:]...), nil
}

func usage(w io.Writer, err error) {
	fmt.Fprintf(w, "paystream: %v\nusage: <image> %s [flags]   (<command> -h lists its flags)\n", err, strings.Join(Commands, "|"))
}
