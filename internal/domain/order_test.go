package domain_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/domain"
)

// TestCloneCopiesEveryFieldAndSharesNothing fills every field of an order,
// reached through any pointer or slice, so a field added later and not
// cloned fails here: the clone must equal the order, marshal to the same
// bytes, and share no pointer or slice with it.
func TestCloneCopiesEveryFieldAndSharesNothing(t *testing.T) {
	var o domain.Order
	fill(t, reflect.ValueOf(&o).Elem(), "order")
	c := o.Clone()
	require.Equal(t, &o, c)
	want, err := json.Marshal(&o)
	require.NoError(t, err)
	got, err := json.Marshal(c)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got))
	requireNothingShared(t, reflect.ValueOf(&o).Elem(), reflect.ValueOf(c).Elem(), "order")

	// Changing the clone leaves the original as it was.
	before := o.Clone()
	c.Snapshot.MerchantID = "changed"
	c.Allocations[0].Status = domain.AllocFailed
	*c.Allocations[1].StuckSince = time.Time{}
	c.LatePayments = append(c.LatePayments[:1], domain.LatePayment{TransactionID: "other"})
	*c.Horizon = time.Time{}
	require.Equal(t, before, &o)
}

func TestCloneKeepsNilAndEmptyApart(t *testing.T) {
	o := &domain.Order{OrderID: "o", LatePayments: []domain.LatePayment{}}
	c := o.Clone()
	require.NotNil(t, c.LatePayments, "an empty list stays an empty list (it marshals as [])")
	require.Nil(t, c.Deposits, "a nil list stays nil (it marshals as null)")
	require.Nil(t, c.Snapshot)
	require.Nil(t, c.Horizon)
}

var (
	decimalType = reflect.TypeFor[decimal.Decimal]()
	timeType    = reflect.TypeFor[time.Time]()
)

// fill sets every exported field reachable from v to a non-zero value: a
// pointer gets a filled value, a slice two filled elements.
func fill(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch {
	case v.Type() == decimalType:
		v.Set(reflect.ValueOf(decimal.RequireFromString("12.50")))
		return
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(path)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(7)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), path)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(t, v.Index(i), path)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			require.True(t, f.IsExported(), "%s.%s: fill knows exported fields only", path, f.Name)
			fill(t, v.Field(i), path+"."+f.Name)
		}
	default:
		t.Fatalf("%s: fill does not know %s; teach it, and Order.Clone, the new kind", path, v.Kind())
	}
}

// requireNothingShared walks a and its copy b together and fails where a
// pointer or slice of b points into a's memory.
func requireNothingShared(t *testing.T, a, b reflect.Value, path string) {
	t.Helper()
	if a.Type() == decimalType || a.Type() == timeType {
		return // immutable values, shared by design
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() {
			return
		}
		require.NotEqual(t, a.Pointer(), b.Pointer(), "%s: the clone shares the pointer", path)
		requireNothingShared(t, a.Elem(), b.Elem(), path)
	case reflect.Slice:
		if a.Len() == 0 {
			return
		}
		require.NotEqual(t, a.Pointer(), b.Pointer(), "%s: the clone shares the slice", path)
		for i := range a.Len() {
			requireNothingShared(t, a.Index(i), b.Index(i), path)
		}
	case reflect.Struct:
		for i := range a.NumField() {
			requireNothingShared(t, a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name)
		}
	}
}

// TestCloneMarshalsAsTheStoredBytesDecode: a store hands out a clone of
// the order it wrote instead of decoding what it stored; the next write
// must not tell the difference. Amounts with trailing zeros and empty
// lists are where a decoded order and the written one differ in memory.
func TestCloneMarshalsAsTheStoredBytesDecode(t *testing.T) {
	horizon := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	amount := decimal.RequireFromString("102.00")
	o := &domain.Order{
		OrderID:      "o-1",
		Status:       domain.StatusCompleted,
		Snapshot:     &domain.Snapshot{Status: domain.StatusCompleted, PayableAmount: decimal.NewNullDecimal(amount), ReceivedTokenAmount: decimal.NewNullDecimal(decimal.RequireFromString("0.000000"))},
		LatePayments: []domain.LatePayment{},
		Deposits:     []domain.Deposit{{TransactionID: "t-1", Amount: amount}},
		Allocations:  []domain.AllocationItem{{ID: "a-1", Amount: decimal.RequireFromString("1.50"), StuckSince: &horizon}},
		Horizon:      &horizon,
	}
	stored, err := json.Marshal(o)
	require.NoError(t, err)
	var decoded domain.Order
	require.NoError(t, json.Unmarshal(stored, &decoded))
	again, err := json.Marshal(&decoded)
	require.NoError(t, err)
	cloned, err := json.Marshal(o.Clone())
	require.NoError(t, err)
	require.Equal(t, string(again), string(cloned))
	require.Equal(t, string(stored), string(cloned))
}
