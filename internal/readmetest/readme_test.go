package readmetest

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"
)

const root = "../.."

// maxProse is the longest line of prose README.md may have.
const maxProse = 120

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	require.NoError(t, err)
	return string(b)
}

// markdownFiles returns README.md and docs/*.md, relative to the repository.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	files := []string{"README.md"}
	for _, d := range docs {
		files = append(files, filepath.ToSlash(filepath.Join("docs", filepath.Base(d))))
	}
	return files
}

// line is one line of a markdown file with where it is.
type line struct {
	no    int
	text  string
	code  bool   // inside a fenced code block, or a fence itself
	info  string // the info string of the enclosing fence
	fence bool   // a fence line
}

func lines(text string) []line {
	var out []line
	in, info := false, ""
	for i, l := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "```") {
			if !in {
				info = strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))
			}
			out = append(out, line{no: i + 1, text: l, code: true, info: info, fence: true})
			in = !in
			continue
		}
		out = append(out, line{no: i + 1, text: l, code: in, info: info})
	}
	return out
}

var (
	headingRE  = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	codeSpanRE = regexp.MustCompile("`[^`]*`")
	linkRE     = regexp.MustCompile(`\]\(([^)\s]+)\)`)
)

// slug is GitHub's anchor for a heading: lower case, punctuation but '-'
// and '_' removed, spaces turned into '-'.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the anchors of a markdown file's headings, with GitHub's
// -1, -2 suffixes for repeated ones.
func anchors(text string) map[string]bool {
	seen := map[string]int{}
	out := map[string]bool{}
	for _, l := range lines(text) {
		if l.code {
			continue
		}
		m := headingRE.FindStringSubmatch(l.text)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			out[s+"-"+strconv.Itoa(n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

// TestSlug pins the anchors the README's links use.
func TestSlug(t *testing.T) {
	require.Equal(t, "one-machine-ingest-with-embedded-jetstream-and-two-workers",
		slug("One machine: ingest with embedded JetStream and two workers"))
	require.Equal(t, "an-orders-state", slug("An order's state"))
	require.Equal(t, "the-rules-file--rules", slug("The rules file (`-rules`)"))
	require.Equal(t, "tls-in-front-of-webhookscobo", slug("TLS in front of `/webhooks/cobo`"))
}

// TestLinksResolve checks every relative link of README.md and docs/*.md:
// its file exists, and its #anchor names a heading of that file.
func TestLinksResolve(t *testing.T) {
	for _, file := range markdownFiles(t) {
		text := readFile(t, file)
		var prose strings.Builder
		for _, l := range lines(text) {
			if !l.code {
				prose.WriteString(codeSpanRE.ReplaceAllString(l.text, "") + "\n")
			}
		}
		links := linkRE.FindAllStringSubmatch(prose.String(), -1)
		require.NotEmpty(t, links, "%s has links", file)
		for _, m := range links {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(target, "#")
			rel := file
			if path != "" {
				rel = filepath.ToSlash(filepath.Join(filepath.Dir(file), path))
				_, err := os.Stat(filepath.Join(root, rel))
				require.NoError(t, err, "%s links to %s, which does not exist", file, target)
			}
			if anchor == "" {
				continue
			}
			require.True(t, strings.HasSuffix(rel, ".md"), "%s links to an anchor of %s, not markdown", file, target)
			require.True(t, anchors(readFile(t, rel))[anchor], "%s links to %s: %s has no heading #%s", file, target, rel, anchor)
		}
	}
}

// TestProseLinesAreShort checks that no line of README.md's prose is over
// maxProse characters; code blocks, tables, images and the addresses of
// links do not count.
func TestProseLinesAreShort(t *testing.T) {
	urlRE := regexp.MustCompile(`\]\([^)]*\)`)
	var long []string
	for _, l := range lines(readFile(t, "README.md")) {
		s := strings.TrimSpace(l.text)
		if l.code || strings.HasPrefix(s, "|") || strings.HasPrefix(s, "![") {
			continue
		}
		if n := len([]rune(urlRE.ReplaceAllString(l.text, "]()"))); n > maxProse {
			long = append(long, strconv.Itoa(l.no)+": "+l.text)
		}
	}
	require.Empty(t, long, "README.md lines of prose over %d characters", maxProse)
}
