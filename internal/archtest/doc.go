// Package archtest holds tests of paystream's import graph: which packages
// a binary or a package may link, so that a change that pulls the embedded
// NATS server into the worker, or the worker assembly into replay, fails
// `make test` instead of going unnoticed. It has no code of its own.
package archtest
