package main

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResolvePicksTheCommand(t *testing.T) {
	for _, name := range Commands {
		path, argv, err := Resolve("/usr/local/bin", []string{name, "-nats-url", "nats://n1:4222", "-h"})
		require.NoError(t, err, name)
		require.Equal(t, filepath.Join("/usr/local/bin", name), path)
		require.Equal(t, []string{name, "-nats-url", "nats://n1:4222", "-h"}, argv, "argv[0] is the command, then its flags unchanged")
	}
}

func TestResolveRefusesAnythingElse(t *testing.T) {
	for _, args := range [][]string{nil, {"-h"}, {"--help"}, {"demo"}, {"/bin/sh"}, {"../ingest"}, {"-cobo-env", "prod"}} {
		_, _, err := Resolve("/usr/local/bin", args)
		require.Error(t, err, "%q", args)
	}
	_, _, err := Resolve("/usr/local/bin", []string{"sh", "-c", "id"})
	require.ErrorContains(t, err, "ingest, worker, sandbox", "the error lists the commands")
}
