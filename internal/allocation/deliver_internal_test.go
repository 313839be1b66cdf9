package allocation

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

func TestCoboItemStatus(t *testing.T) {
	cases := []struct{ item, batch, want string }{
		{"", "", domain.AllocCompleted},
		{"", cobo.BatchCompleted, domain.AllocCompleted},
		{"", cobo.BatchFailed, domain.AllocFailed},
		{"", cobo.BatchProcessing, domain.AllocPending},
		{"", cobo.BatchPending, domain.AllocPending},
		{"", cobo.BatchPartiallyCompleted, domain.AllocPending},
		{"", "SomethingNew", domain.AllocPending},
		{cobo.ItemCompleted, cobo.BatchPartiallyCompleted, domain.AllocCompleted},
		{cobo.ItemFailed, cobo.BatchPartiallyCompleted, domain.AllocFailed},
		{cobo.ItemFailed, "", domain.AllocFailed},
		{cobo.ItemPending, "", domain.AllocPending},
		{cobo.ItemTransferring, cobo.BatchProcessing, domain.AllocPending},
		{"Rejected", cobo.BatchCompleted, domain.AllocPending},
	}
	for _, tc := range cases {
		got, reason := coboItemStatus(tc.item, tc.batch)
		require.Equal(t, tc.want, got, "item %q batch %q", tc.item, tc.batch)
		require.Equal(t, got == domain.AllocFailed, reason != "", "a failure has a reason")
	}
	for _, st := range []string{BatchClaiming, BatchReady, BatchChecking, BatchSplitting} {
		got, _ := itemStatus(&Batch{Status: st}, domain.AllocationItem{ProviderStatus: cobo.ItemCompleted})
		require.Equal(t, domain.AllocPlanned, got, "a batch Cobo does not hold: %s", st)
	}
}

func TestBackoffIsCapped(t *testing.T) {
	b := &Batcher{cfg: BatcherConfig{RecoverAfter: time.Second, RetryMax: 10 * time.Second}}
	var got []time.Duration
	for r := 1; r <= 7; r++ {
		got = append(got, b.backoff(r))
	}
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}, got)
}
