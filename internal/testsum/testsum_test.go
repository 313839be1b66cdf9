package testsum_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/testsum"
)

func TestSummary(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"Action":"start","Package":"p/a"}`,
		`{"Action":"run","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"pass","Package":"p/a","Test":"TestOK","Elapsed":0.1}`,
		`{"Action":"run","Package":"p/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"p/a","Test":"TestBad","Output":"    a_test.go:9: boom\n"}`,
		`{"Action":"fail","Package":"p/a","Test":"TestBad","Elapsed":0.2}`,
		`{"Action":"skip","Package":"p/a","Test":"TestLater","Elapsed":0}`,
		`{"Action":"fail","Package":"p/a","Elapsed":0.5}`,
		`{"Action":"output","Package":"p/b","Output":"?   \tp/b\t[no test files]\n"}`,
		`{"Action":"skip","Package":"p/b","Elapsed":0}`,
		`{"Action":"pass","Package":"p/c","Test":"TestX","Elapsed":1}`,
		`{"Action":"pass","Package":"p/c","Elapsed":1.2}`,
		`not json: go: a build error`,
	}, "\n")
	var out bytes.Buffer
	s, err := testsum.Run(strings.NewReader(in), &out)
	require.NoError(t, err)
	require.False(t, s.OK())
	require.Equal(t, testsum.Summary{Packages: 3, NoTests: 1, FailedPackages: 1, Passed: 2, Failed: 1, Skipped: 1, Elapsed: s.Elapsed}, s)
	got := out.String()
	require.Contains(t, got, "--- FAIL: p/a TestBad (0.20s)\n    a_test.go:9: boom\n")
	require.Contains(t, got, "ok   p/c (1.2s)\n")
	require.Contains(t, got, "not json: go: a build error\n")
	require.True(t, strings.HasSuffix(got, "\ntests: 2 passed, 1 failed, 1 skipped\n"), got)
}
