// Command testsum turns `go test -json` on stdin into one line per
// package, the output of failures, and a summary line; it exits 1 when
// anything failed.
package main

import (
	"fmt"
	"os"

	"github.com/paystream/paystream/internal/testsum"
)

func main() {
	s, err := testsum.Run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(1)
	}
	if !s.OK() {
		os.Exit(1)
	}
}
