package console_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/console"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/testutil"
)

func TestConfigValidationNamesTheField(t *testing.T) {
	v := testutil.NewSigner(t).Verifier(t)
	for _, tc := range []struct {
		cfg  console.Config
		want string
	}{
		{console.Config{Verifier: v}, "Token is required"},
		{console.Config{Token: "t"}, "Verifier is required"},
		{console.Config{Token: "t", Verifier: v, NoAllocations: true, Allocation: &apply.Allocation{}}, "Allocation and NoAllocations"},
		{console.Config{Token: "t", Verifier: v, RefreshEvery: time.Millisecond}, "RefreshEvery"},
		{console.Config{Token: "t", Verifier: v, IngestAdminURL: "127.0.0.1:8081"}, "IngestAdminURL"},
		{console.Config{Token: "t", Verifier: v, MaxDeadLetters: -1}, "MaxDeadLetters"},
		{console.Config{Token: "t", Verifier: v, SampleEvery: -time.Second}, "SampleEvery"},
	} {
		_, err := console.Start(context.Background(), tc.cfg)
		require.ErrorContains(t, err, tc.want)
	}
}

// TestAdminAPI drives every JSON call against a real ingest and worker:
// nothing without the token, the overview's figures, the orders list's
// paging and filters, an order with its verified timeline, a re-apply
// that changes nothing, and a dead letter redriven after its cause was
// fixed, followed until the workers processed it.
func TestAdminAPI(t *testing.T) {
	s := startStack(t)
	s.seed(t)

	// Without the token: the shell (no data) and the probes only.
	for _, path := range []string{"/api/v1/overview", "/api/v1/orders/O-A", "/ui/overview", "/ui/orders/O-A", "/api/v1/nothing"} {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + s.token} {
			req, err := http.NewRequest(http.MethodGet, s.con.URL()+path, nil)
			require.NoError(t, err)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s with %q", path, auth)
			require.NotContains(t, string(body), "O-A")
		}
	}
	for _, path := range []string{"/", "/orders/O-A", "/dead-letters", "/static/console.js", "/healthz", "/readyz"} {
		resp, err := http.Get(s.con.URL() + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.NotContains(t, string(body), "M1001", "%s holds no data", path)
		require.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'")
	}

	// Every page's fragment renders.
	for _, path := range []string{"/ui/overview", "/ui/orders", "/ui/orders?status=Completed&merchant=M1001&limit=1", "/ui/orders?q=O-A", "/ui/orders?q=O-nope",
		"/ui/orders/O-A", "/ui/orders/O-C", "/ui/dead-letters", "/ui/dead-letters?reason=untrusted", "/ui/attention"} {
		req, err := http.NewRequest(http.MethodGet, s.con.URL()+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+s.token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
		require.Contains(t, string(body), `class="page"`, path)
	}

	var ov console.Overview
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/overview", nil, &ov))
	require.Equal(t, 6, ov.Orders.Orders)
	require.Equal(t, map[string]int{"Completed": 2, "Expired": 1, "Processing": 2, "Pending": 1}, ov.Orders.ByStatus)
	require.Equal(t, map[string]int{"unknown_order": 1, "untrusted": 1}, ov.DeadLettersByKind)
	require.EqualValues(t, 2, ov.DeadLetters)
	require.Positive(t, ov.Events)
	kinds := map[string]int{}
	for _, e := range ov.OperatorErrors {
		kinds[e.Kind]++
	}
	require.Equal(t, map[string]int{"failed_allocation": 2, "stuck_allocation": 1, "untrusted": 1, "unknown_order": 1}, kinds)
	require.Eventually(t, func() bool {
		s.call(t, http.MethodGet, "/api/v1/overview", nil, &ov)
		return ov.Webhooks != nil && ov.Webhooks.Accepted == 15 && ov.Rates.Stored != nil && ov.Rates.Accepted != nil && *ov.Rates.Accepted > 0
	}, 10*time.Second, 100*time.Millisecond, "ingest's counters and the rates are read")
	require.True(t, slices.ContainsFunc(ov.Consumers, func(c console.ConsumerLag) bool { return c.Consumer == "paystream-worker" }))

	// The orders list: newest change first, paged, filtered.
	var p console.Page
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/orders?limit=4", nil, &p))
	require.Equal(t, 6, p.Total)
	require.Len(t, p.Orders, 4)
	require.NotZero(t, p.Next)
	var rest console.Page
	s.call(t, http.MethodGet, "/api/v1/orders?limit=4&before="+itoa(p.Next), nil, &rest)
	require.Len(t, rest.Orders, 2)
	require.Zero(t, rest.Next)
	seen := map[string]bool{}
	for _, o := range append(p.Orders, rest.Orders...) {
		require.False(t, seen[o.OrderID], "each order once")
		seen[o.OrderID] = true
	}
	s.call(t, http.MethodGet, "/api/v1/orders?status=Completed", nil, &p)
	require.ElementsMatch(t, []string{"O-A", "O-B"}, orderIDs(p))
	s.call(t, http.MethodGet, "/api/v1/orders?merchant=M1002&status=Processing", nil, &p)
	require.Equal(t, []string{"O-D"}, orderIDs(p))
	require.Equal(t, http.StatusBadRequest, s.call(t, http.MethodGet, "/api/v1/orders?limit=100000", nil, nil))

	// One order, from the bucket, and its timeline.
	var d console.OrderDetail
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/orders/O-A", nil, &d))
	require.Equal(t, domain.StatusCompleted, d.Order.Status)
	require.Len(t, d.Order.Allocations, 3)
	require.Len(t, d.Order.LatePayments, 1)
	require.Equal(t, http.StatusNotFound, s.call(t, http.MethodGet, "/api/v1/orders/O-nope", nil, nil))
	var tl struct {
		Events []console.TimelineEvent `json:"events"`
	}
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/orders/O-A/events", nil, &tl))
	require.Len(t, tl.Events, 4)
	for _, e := range tl.Events {
		require.NotNil(t, e.Verified)
		require.True(t, *e.Verified, "seq %d", e.Seq)
		require.Contains(t, string(e.Event), `"event_id"`)
	}
	s.call(t, http.MethodGet, "/api/v1/orders/O-C/events", nil, &tl)
	forged := slices.IndexFunc(tl.Events, func(e console.TimelineEvent) bool { return e.EventID == "forged-C" })
	require.GreaterOrEqual(t, forged, 0)
	require.False(t, *tl.Events[forged].Verified, "the forged event is shown unverified")

	// Re-applying a settled order changes nothing.
	var ra console.ReapplyResult
	require.Equal(t, http.StatusOK, s.call(t, http.MethodPost, "/api/v1/orders/O-A/replay", nil, &ra))
	require.Empty(t, ra.Error)
	require.Equal(t, 4, ra.Summary.Events)
	require.Equal(t, 4, ra.Summary.Unchanged)
	require.Equal(t, []string{"nothing: the stored state was already current"}, ra.Changes)

	// The dead letter of an order Cobo did not know: fixed (Cobo knows it
	// now), redriven, processed, and the order completes.
	var dl console.DeadLetterList
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/dead-letters?reason=unknown_order", nil, &dl))
	require.Len(t, dl.DeadLetters, 1)
	require.Equal(t, 2, dl.Total)
	u := dl.DeadLetters[0]
	require.Equal(t, "O-U", u.OrderID)
	require.True(t, strings.HasPrefix(u.Reason, "unknown_order: "), u.Reason)
	s.register("O-U", "M1003")
	var rr console.RedriveResponse
	require.Equal(t, http.StatusOK, s.call(t, http.MethodPost, "/api/v1/dead-letters/"+itoa(u.DLQSeq)+"/redrive", nil, &rr))
	require.Equal(t, 1, rr.Redriven, "%+v", rr)
	copySeq := rr.Results[0].Line.Seq
	var out console.EventOutcome
	require.Eventually(t, func() bool {
		s.call(t, http.MethodGet, "/api/v1/events/"+itoa(copySeq)+"/outcome", nil, &out)
		return out.State != "waiting"
	}, 20*time.Second, 100*time.Millisecond)
	require.Equal(t, "processed", out.State)
	s.call(t, http.MethodGet, "/api/v1/orders/O-U", nil, &d)
	require.Equal(t, domain.StatusCompleted, d.Order.Status)
	require.NotEmpty(t, d.Order.Allocations)

	// Redriving it again finds nothing; bad bodies are refused.
	require.Equal(t, http.StatusOK, s.call(t, http.MethodPost, "/api/v1/dead-letters/redrive", map[string]any{"seqs": []uint64{u.DLQSeq}}, &rr))
	require.Equal(t, 1, rr.Failed)
	require.Contains(t, rr.Results[0].Error, "redriven already")
	require.Equal(t, http.StatusBadRequest, s.call(t, http.MethodPost, "/api/v1/dead-letters/redrive", map[string]any{"seqs": []uint64{}}, nil))
	require.Equal(t, http.StatusBadRequest, s.call(t, http.MethodPost, "/api/v1/dead-letters/redrive", map[string]any{"all": true}, nil))

	// The forged one, redriven, is dead-lettered again, and says so.
	s.call(t, http.MethodGet, "/api/v1/dead-letters?reason=untrusted", nil, &dl)
	require.Len(t, dl.DeadLetters, 1)
	s.call(t, http.MethodPost, "/api/v1/dead-letters/redrive", map[string]any{"seqs": []uint64{dl.DeadLetters[0].DLQSeq}}, &rr)
	require.Equal(t, 1, rr.Redriven)
	require.Eventually(t, func() bool {
		s.call(t, http.MethodGet, "/api/v1/events/"+itoa(rr.Results[0].Line.Seq)+"/outcome", nil, &out)
		return out.State == "dead_lettered"
	}, 20*time.Second, 100*time.Millisecond)
	require.True(t, strings.HasPrefix(out.DeadLetter.Reason, "untrusted: "))

	var att struct {
		Items  []console.AttentionItem `json:"items"`
		Orders int                     `json:"orders"`
	}
	require.Equal(t, http.StatusOK, s.call(t, http.MethodGet, "/api/v1/attention", nil, &att))
	require.GreaterOrEqual(t, att.Orders, 2)
	for _, it := range att.Items {
		require.True(t, it.Status == domain.AllocFailed || it.StuckSince != nil, "%+v", it)
	}
}

// TestConsoleWithoutReapplySettings refuses a re-apply and says which
// flags it needs.
func TestConsoleWithoutReapplySettings(t *testing.T) {
	s := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := console.Start(ctx, console.Config{NATSURL: s.ing.NATSURL(), NATSOptions: s.ing.Credentials().Login("operator"), Listen: "127.0.0.1:0", Token: "t", Verifier: s.signer.Verifier(t)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Shutdown(context.Background())) })
	req, err := http.NewRequest(http.MethodPost, c.URL()+"/api/v1/orders/O-A/replay", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer t")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, string(body), "-no-allocations")
}

func orderIDs(p console.Page) []string {
	var out []string
	for _, o := range p.Orders {
		out = append(out, o.OrderID)
	}
	return out
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestReadmeShowsTheConsole checks the README's "Console" section: every
// screenshot it shows is committed under docs/img as a PNG of at most
// 200 KB, and every screenshot there is shown.
func TestReadmeShowsTheConsole(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(readme), "\n## Console\n")
	require.True(t, ok, "the README has a Console section")
	section, _, _ = strings.Cut(section, "\n## ")
	shown := map[string]bool{}
	for _, m := range regexp.MustCompile(`\]\((docs/img/[^)]+)\)`).FindAllStringSubmatch(section, -1) {
		shown[m[1]] = true
	}
	require.NotEmpty(t, shown, "the section shows a screenshot")
	committed, err := filepath.Glob(filepath.Join("..", "..", "docs", "img", "*"))
	require.NoError(t, err)
	for _, path := range committed {
		rel := "docs/img/" + filepath.Base(path)
		require.True(t, shown[rel], "%s is committed but not shown", rel)
		delete(shown, rel)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")), "%s is a PNG", rel)
		require.LessOrEqual(t, len(b), 200<<10, "%s is at most 200 KB", rel)
	}
	require.Empty(t, shown, "screenshots shown but not committed")
	for _, flag := range []string{"-listen", "-admin-token-file", "-ingest-admin-url", "-no-allocations", "/api/v1/dead-letters/redrive"} {
		require.Contains(t, section, flag)
	}
}
