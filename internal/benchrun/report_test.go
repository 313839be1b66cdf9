package benchrun

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMedians(t *testing.T) {
	require.Zero(t, median(nil))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))

	runs := []WorkerResult{{WorkerCPUus: 300}, {WorkerCPUus: 100}, {WorkerCPUus: 200}}
	require.Equal(t, 200.0, medianRun(runs).WorkerCPUus)
	require.Equal(t, 300.0, runs[0].WorkerCPUus, "the runs keep their order")
	require.Equal(t, 100.0, medianRun(runs[:2]).WorkerCPUus, "the lower middle of an even count: a run that happened")
}

func TestWorkerSeriesRatiosArePairwise(t *testing.T) {
	s := WorkerSeries{
		Workers:  2,
		Runs:     []WorkerResult{{WorkerCPUus: 140, PerSecond: 10}, {WorkerCPUus: 300, PerSecond: 30}, {WorkerCPUus: 150, PerSecond: 20}},
		Baseline: []WorkerResult{{WorkerCPUus: 200}, {WorkerCPUus: 400}, {WorkerCPUus: 0}},
	}
	// The third pair has no baseline figure and gives no ratio.
	require.Equal(t, []float64{0.7, 0.75}, s.CPURatios())
	// Nor does a run without a figure: its ratio of 0 would flatter it.
	s.Runs[1].WorkerCPUus = 0
	require.Equal(t, []float64{0.7}, s.CPURatios())
	s.Runs[1].WorkerCPUus = 300
	require.Equal(t, 20.0, s.PerSecond())
	require.Equal(t, 150.0, s.Median().WorkerCPUus)
}

func TestTurnsAlternate(t *testing.T) {
	require.Equal(t, [2]int{0, 1}, turns(0))
	require.Equal(t, [2]int{1, 0}, turns(1))
	require.Equal(t, [2]int{0, 1}, turns(2))
}
