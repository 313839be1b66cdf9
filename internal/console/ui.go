package console

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpapi"
)

// web holds the page shell, the fragment templates and the static files:
// the whole UI is in the binary, so it works offline and needs no build.
//
//go:embed web
var web embed.FS

var (
	shellHTML = mustRead("web/shell.html")
	pages     = template.Must(template.New("pages").Funcs(funcs).ParseFS(web, "web/templates/*.html"))
)

func mustRead(name string) []byte {
	b, err := web.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}

// serveShell answers every page URL with the shell, which holds no data:
// its script fetches the page's fragment with the token.
func serveShell(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(shellHTML)
}

func staticHandler() http.Handler {
	sub, err := fs.Sub(web, "web/static")
	if err != nil {
		panic(err)
	}
	files := http.StripPrefix("/static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// Revalidated on every load, so a new binary's script is used at
		// once.
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, req)
	})
}

// render writes the fragment name with data, or, when the template fails
// (a bug, logged), an error: never half a page.
func (c *Console) render(w http.ResponseWriter, name string, data any) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		c.cfg.Logger.Error().Err(err).Str("page", name).Msg("page not rendered")
		httpapi.WriteError(w, fmt.Errorf("render %s: %w", name, err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

// renderError answers a fragment request that failed with a fragment
// saying why (4xx) or what to retry (5xx), with the error's status.
func renderError(w http.ResponseWriter, title string, err error) {
	var b bytes.Buffer
	_ = pages.ExecuteTemplate(&b, "error", map[string]string{"Title": title, "Message": httpapi.PublicMessage(err)})
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(httpapi.Status(err))
	_, _ = w.Write(b.Bytes())
}

var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"tsp": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"unix": func(sec int64) string {
		if sec == 0 {
			return "—"
		}
		return time.Unix(sec, 0).UTC().Format("2006-01-02 15:04:05Z")
	},
	"dec": func(d decimal.NullDecimal) string {
		if !d.Valid {
			return "—"
		}
		return d.Decimal.String()
	},
	"rate": func(r *float64) string {
		if r == nil {
			return "…"
		}
		return strconv.FormatFloat(*r, 'f', 1, 64)
	},
	"num": func(n any) string {
		switch v := n.(type) {
		case int:
			return group(strconv.Itoa(v))
		case uint64:
			return group(strconv.FormatUint(v, 10))
		case float64:
			return group(strconv.FormatFloat(v, 'f', 0, 64))
		}
		return fmt.Sprint(n)
	},
	"deref": func(b *bool) bool { return b != nil && *b },
	"pretty": func(raw []byte) string {
		if len(raw) == 0 {
			return ""
		}
		var b bytes.Buffer
		if err := json.Indent(&b, raw, "", "  "); err != nil {
			return string(raw)
		}
		return b.String()
	},
	"orderURL": func(id string) string { return "/orders/" + url.PathEscape(id) },
	"seqs": func(dls []DeadLetter) string {
		s := make([]string, len(dls))
		for i, d := range dls {
			s[i] = strconv.FormatUint(d.DLQSeq, 10)
		}
		return strings.Join(s, ",")
	},
	"lower": func(v any) string { return strings.ToLower(fmt.Sprint(v)) },
	"add":   func(a, b int) int { return a + b },
	"mul":   func(a, b int) int { return a * b },
	"statuses": func() []string {
		return []string{string(domain.StatusPending), string(domain.StatusProcessing), string(domain.StatusCompleted), string(domain.StatusExpired), string(domain.StatusUnderpaid)}
	},
	"allocStatuses": func() []string { return indexStatuses },
	"kinds":         func() []string { return DeadLetterKinds },
	"get":           func(m map[string]int, k string) int { return m[k] },
	"isOperatorKind": func(k string) bool {
		return slices.Contains(operatorKinds, k)
	},
}

// group writes digits in groups of three: 1,234,567.
func group(s string) string {
	if len(s) <= 4 {
		return s
	}
	var b strings.Builder
	pre := len(s) % 3
	b.WriteString(s[:pre])
	for i := pre; i < len(s); i += 3 {
		if b.Len() > 0 {
			b.WriteString(",")
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

type overviewPage struct {
	Overview
	Refresh int
	Now     time.Time
	Ingest  bool
}

func (c *Console) uiOverview(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	c.render(w, "overview", overviewPage{Overview: c.overview(ctx), Refresh: int(c.cfg.RefreshEvery / time.Second), Now: time.Now(), Ingest: c.cfg.IngestAdminURL != ""})
}

type ordersPage struct {
	Query     Query
	Page      Page
	PageNo    int
	Q         string
	NotFound  string
	Merchants []string
	Ready     bool
	NextURL   string
}

func (c *Console) uiOrders(w http.ResponseWriter, req *http.Request) {
	if id := strings.TrimSpace(req.URL.Query().Get("q")); id != "" {
		// A search for an id opens the order when it exists.
		ctx, cancel := c.requestCtx(req)
		defer cancel()
		if _, err := c.order(ctx, id); err == nil {
			c.renderOrder(w, req, id, true)
			return
		} else if !errors.Is(err, domain.ErrNotFound) {
			renderError(w, "Orders", err)
			return
		}
		c.renderOrders(w, req, id)
		return
	}
	c.renderOrders(w, req, "")
}

func (c *Console) renderOrders(w http.ResponseWriter, req *http.Request, notFound string) {
	q, err := parseQuery(req)
	if err != nil {
		renderError(w, "Orders", err)
		return
	}
	pageNo, _ := strconv.Atoi(req.URL.Query().Get("p"))
	pageNo = max(pageNo, 1)
	st := c.index.Stats()
	p := ordersPage{Query: q, Page: c.index.Page(q), PageNo: pageNo, NotFound: notFound, Q: notFound, Merchants: st.Merchants, Ready: st.Ready}
	if p.Page.Next != 0 {
		v := url.Values{}
		if q.Status != "" {
			v.Set("status", q.Status)
		}
		if q.Merchant != "" {
			v.Set("merchant", q.Merchant)
		}
		if q.Limit != 0 {
			v.Set("limit", strconv.Itoa(q.Limit))
		}
		v.Set("before", strconv.FormatUint(p.Page.Next, 10))
		v.Set("p", strconv.Itoa(pageNo+1))
		p.NextURL = "/orders?" + v.Encode()
	}
	if p.Query.Limit == 0 {
		p.Query.Limit = DefaultPageSize
	}
	c.render(w, "orders", p)
}

type orderPage struct {
	OrderDetail
	Timeline    []TimelineEvent
	TimelineErr string
	CanApply    bool
	ApplyHint   string
	// Location is the page's URL when a search led to it.
	Location string
}

func (c *Console) uiOrder(w http.ResponseWriter, req *http.Request) {
	c.renderOrder(w, req, req.PathValue("id"), false)
}

func (c *Console) renderOrder(w http.ResponseWriter, req *http.Request, id string, searched bool) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	d, err := c.order(ctx, id)
	if err != nil {
		renderError(w, "Order "+id, err)
		return
	}
	p := orderPage{OrderDetail: d, CanApply: c.cfg.canApply()}
	if !p.CanApply {
		p.ApplyHint = ErrNoApply.Error()
	}
	if searched {
		p.Location = "/orders/" + url.PathEscape(id)
	}
	if p.Timeline, err = c.timeline(ctx, id); err != nil {
		p.TimelineErr = httpapi.PublicMessage(err)
	}
	c.render(w, "order", p)
}

// maxShownDeadLetters bounds the rows of the dead letters page (and so
// its "redrive all shown"); the filters narrow a longer list.
const maxShownDeadLetters = 500

type deadLettersPage struct {
	DeadLetterList
	Filter DeadLetterFilter
	// Matching is how many the filter selects; the page shows the newest
	// maxShownDeadLetters.
	Matching int
}

func (c *Console) uiDeadLetters(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	f := deadLetterFilter(req)
	l, err := c.deadLetters(ctx, f)
	if err != nil {
		renderError(w, "Dead letters", fmt.Errorf("dead letters %w: %v", httpapi.ErrUnavailable, err))
		return
	}
	p := deadLettersPage{DeadLetterList: l, Filter: f, Matching: len(l.DeadLetters)}
	p.DeadLetters = p.DeadLetters[:min(len(p.DeadLetters), maxShownDeadLetters)]
	c.render(w, "deadletters", p)
}

type attentionPage struct {
	Items  []AttentionItem
	Orders int
	Max    int
}

func (c *Console) uiAttention(w http.ResponseWriter, _ *http.Request) {
	items, orders := c.index.Attention(maxAttention)
	c.render(w, "attention", attentionPage{Items: items, Orders: orders, Max: maxAttention})
}
