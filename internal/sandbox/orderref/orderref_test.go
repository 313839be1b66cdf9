package orderref_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/sandbox/orderref"
)

func TestNamed(t *testing.T) {
	s := orderref.NewSet("O20260315-M1001-123450001", "O-1", "")
	for text, want := range map[string]string{
		"referral O20260315-M1001-123450001":                       "O20260315-M1001-123450001",
		"late payment 9f1c-aa for order O20260315-M1001-123450001": "O20260315-M1001-123450001",
		"O-1":                        "O-1",
		"order O-1, settled":         "O-1",
		"O-1:split:0:M9000":          "O-1",
		"platform commission O-10":   "",
		"xO-1":                       "",
		"O20260315-M1001-1234500011": "",
		"":                           "",
		"no order here":              "",
	} {
		got, ok := s.Named(text)
		require.Equal(t, want, got, "text %q", text)
		require.Equal(t, want != "", ok, "text %q", text)
	}
	_, ok := orderref.NewSet().Named("O-1")
	require.False(t, ok, "an empty set names nothing")
	_, ok = orderref.Set(nil).Named("O-1")
	require.False(t, ok, "the zero set names nothing")
}
