package natsconn

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRedactHidesPasswords(t *testing.T) {
	require.Equal(t, "nats://worker:xxxxx@n1:4222,nats://n2:4222", redact("nats://worker:s3cret@n1:4222, nats://n2:4222"))
	require.Equal(t, "nats://n1:4222", redact("nats://n1:4222"))
	require.Equal(t, "nats://xxxxx@n1:4222", redact("nats://s3cret-token@n1:4222"))
	require.NotContains(t, redact("nats://u:p%zz@n1"), "p%zz")
}
