package payer

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSchedule(t *testing.T) {
	kinds := func(js []job) string {
		b := make([]byte, len(js))
		for i, j := range js {
			b[i] = 'o'
			if j.foreign {
				b[i] = 'F'
			}
		}
		return string(b)
	}
	require.Equal(t, "oooo", kinds(schedule(4, 0)), "no foreign orders: ours only")
	require.Equal(t, "FFF", kinds(schedule(0, 3)))
	require.Equal(t, "oooooFooooo", kinds(schedule(10, 1)), "a single foreign order comes in the middle")
	require.Equal(t, "oFooFooFo", kinds(schedule(6, 3)))
	require.Equal(t, "FoFoFo", kinds(schedule(3, 3)))
	require.Empty(t, schedule(0, 0))
	for orders := range 40 {
		for foreign := range 40 {
			js := schedule(orders, foreign)
			require.Len(t, js, orders+foreign)
			next := map[bool]int{}
			for _, j := range js {
				require.Equal(t, next[j.foreign], j.index, "each kind in index order, every index once")
				next[j.foreign]++
			}
			require.Equal(t, orders, next[false])
			require.Equal(t, foreign, next[true])
		}
	}
}

func TestForeignRunNumberDiffersFromOurs(t *testing.T) {
	for seed := range uint64(2000) {
		run := runNumber(seed)
		f := foreignRunNumber(seed, run)
		require.NotEqual(t, run, f)
		require.True(t, f >= 10000 && f <= 99999, "five digits: %d", f)
	}
}
