// Package testsum reads `go test -json` and prints what a person needs
// from it: one line per package, the output of what failed, and a closing
// summary line ("tests: N passed, N failed, N skipped") that CI reads.
package testsum

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action      string  `json:"Action"`
	Package     string  `json:"Package"`
	ImportPath  string  `json:"ImportPath"`
	Test        string  `json:"Test"`
	Elapsed     float64 `json:"Elapsed"`
	Output      string  `json:"Output"`
	FailedBuild string  `json:"FailedBuild"`
}

// Summary counts what a run did.
type Summary struct {
	Packages, NoTests, FailedPackages int
	Passed, Failed, Skipped           int
	Elapsed                           time.Duration
}

// OK reports a run without failures.
func (s Summary) OK() bool { return s.Failed == 0 && s.FailedPackages == 0 }

// Run reads `go test -json` from in and writes the report to out. Lines
// that are not JSON (a build error printed by go itself) are passed on.
func Run(in io.Reader, out io.Writer) (Summary, error) {
	var s Summary
	start := time.Now()
	output := map[string][]string{} // package/test -> its output lines
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintln(out, string(line))
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			output[key] = append(output[key], e.Output)
		case "build-output":
			output[e.ImportPath] = append(output[e.ImportPath], e.Output)
		case "build-fail":
			fmt.Fprint(out, strings.Join(output[e.ImportPath], ""))
		case "pass", "fail", "skip":
			if e.Test != "" {
				switch e.Action {
				case "pass":
					s.Passed++
				case "fail":
					s.Failed++
					fmt.Fprintf(out, "--- FAIL: %s %s (%.2fs)\n%s", e.Package, e.Test, e.Elapsed, strings.Join(output[key], ""))
				case "skip":
					s.Skipped++
				}
				delete(output, key)
				continue
			}
			s.Packages++
			switch {
			case e.Action == "fail":
				s.FailedPackages++
				// The package's own output holds panics, timeouts and
				// build errors that belong to no test.
				fmt.Fprintf(out, "FAIL %s (%.1fs)\n%s", e.Package, e.Elapsed, strings.Join(output[key], ""))
			case e.Action == "skip" || slices.ContainsFunc(output[key], func(l string) bool { return strings.Contains(l, "[no test files]") }):
				s.NoTests++
			default:
				fmt.Fprintf(out, "ok   %s (%.1fs)\n", e.Package, e.Elapsed)
			}
			delete(output, key)
		}
	}
	s.Elapsed = time.Since(start)
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("read go test -json: %w", err)
	}
	fmt.Fprintf(out, "%d packages (%d without tests, %d failed), %d tests in %s\n",
		s.Packages, s.NoTests, s.FailedPackages, s.Passed+s.Failed+s.Skipped, s.Elapsed.Round(100*time.Millisecond))
	fmt.Fprintf(out, "tests: %d passed, %d failed, %d skipped\n", s.Passed, s.Failed, s.Skipped)
	return s, nil
}
