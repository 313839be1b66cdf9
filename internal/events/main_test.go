package events_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/paystream/paystream/internal/admin"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
)

// TestMain fails the package when a test leaves goroutines running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The adapters implement the role interfaces their users declare.
var (
	_ handlers.OrderRepo = (*events.OrderStore)(nil)
	_ admin.OrderReader  = (*events.OrderStore)(nil)
)
