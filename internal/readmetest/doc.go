// Package readmetest holds tests of README.md and docs/*.md only: links and
// anchors resolve, prose lines stay short, and the shell blocks marked
// runnable name binaries, subcommands and flags that exist.
package readmetest
