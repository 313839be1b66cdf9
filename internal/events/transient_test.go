package events

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestTransientErrorsAreRetriedRefusalsAreNot(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("create: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{fmt.Errorf("lookup: %w", &jetstream.APIError{Code: 503, ErrorCode: jsErrClusterNotAvailable, Description: "JetStream system temporarily unavailable"}), true},
		{&jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeStreamNotFound}, false},
		{jetstream.ErrStreamNameAlreadyInUse, false},
		{context.Canceled, false},
		{errors.New("permissions violation"), false},
	} {
		require.Equal(t, tc.want, transient(tc.err), "%v", tc.err)
	}
}
