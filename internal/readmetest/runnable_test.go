package readmetest

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// runnableInfo is the info string of a README shell block whose commands a
// reader can paste as they are; TestRunnableBlocks checks them.
const runnableInfo = "sh runnable"

// tools are the commands besides bin/<name> and make that a runnable block
// may use.
var tools = map[string]bool{
	"curl": true, "export": true, "cd": true, "echo": true, "cat": true, "grep": true, "head": true,
	"cut": true, "sleep": true, "kill": true, "wait": true, "jq": true,
}

// runnableBlocks returns the commands of README.md's runnable blocks, one
// logical line each (continuations joined, comments removed).
func runnableBlocks(t *testing.T) [][]string {
	t.Helper()
	var blocks [][]string
	var cur []string
	pending := ""
	for _, l := range lines(readFile(t, "README.md")) {
		if l.fence {
			if cur != nil {
				blocks = append(blocks, cur)
				cur = nil
			} else if l.info == runnableInfo {
				cur = []string{}
			}
			continue
		}
		if cur == nil || !l.code {
			continue
		}
		s := pending + stripComment(l.text)
		if strings.HasSuffix(strings.TrimSpace(s), `\`) {
			pending = strings.TrimSuffix(strings.TrimSpace(s), `\`) + " "
			continue
		}
		pending = ""
		if strings.TrimSpace(s) != "" {
			cur = append(cur, strings.TrimSpace(s))
		}
	}
	return blocks
}

// stripComment removes a shell comment: a # at the start or after a blank.
func stripComment(s string) string {
	if strings.HasPrefix(strings.TrimSpace(s), "#") {
		return ""
	}
	quote := rune(0)
	prev := ' '
	for i, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (prev == ' ' || prev == '\t'):
			return s[:i]
		}
		prev = r
	}
	return s
}

// commands splits a command line into simple commands: the parts between
// |, &&, ||, ; and &, and the insides of $(...), each as its words.
func commands(s string) [][]string {
	var out [][]string
	// $(...) first, innermost out.
	sub := regexp.MustCompile(`\$\(([^()]*)\)`)
	for {
		m := sub.FindStringSubmatchIndex(s)
		if m == nil {
			break
		}
		out = append(out, commands(s[m[2]:m[3]])...)
		s = s[:m[0]] + "SUBST" + s[m[1]:]
	}
	var word strings.Builder
	var words []string
	quote := rune(0)
	flushWord := func() {
		if word.Len() > 0 {
			words = append(words, word.String())
			word.Reset()
		}
	}
	flushCmd := func() {
		flushWord()
		if len(words) > 0 {
			out = append(out, words)
		}
		words = nil
	}
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				word.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote = r
		case r == ' ' || r == '\t':
			flushWord()
		case r == '|' || r == '&' || r == ';':
			flushCmd()
		default:
			word.WriteRune(r)
		}
	}
	flushCmd()
	return out
}

// TestCommands pins how a line is split.
func TestCommands(t *testing.T) {
	require.Equal(t, [][]string{
		{"bin/sandbox", "-print-webhook-pubkey"},
		{"export", "K=SUBST"},
	}, commands(`export K=$(bin/sandbox -print-webhook-pubkey)`))
	require.Equal(t, [][]string{
		{"A=1", "bin/worker", "replay", "-type", "x"}, {"grep", "-o", `"a":"[^"]*"`}, {"head", "-1"},
	}, commands(`A=1 bin/worker replay -type x | grep -o '"a":"[^"]*"' | head -1`))
	require.Equal(t, [][]string{{"bin/ingest", "-data-dir", "./data"}, {"curl", "-s", "x"}},
		commands(`bin/ingest -data-dir ./data & curl -s x`))
}

var (
	assignRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	flagRE   = regexp.MustCompile(`(?m)^\s+-([A-Za-z0-9][A-Za-z0-9_.-]*)`)
)

// helper builds cmd/... once and answers -h for a binary and subcommands.
type helper struct {
	dir   string
	cache map[string]string
}

func (h *helper) help(t *testing.T, name string, sub []string) string {
	t.Helper()
	key := strings.Join(append([]string{name}, sub...), " ")
	if out, ok := h.cache[key]; ok {
		return out
	}
	args := append(append([]string{}, sub...), "-h")
	out, _ := exec.Command(filepath.Join(h.dir, name), args...).CombinedOutput() // -h exits non-zero with some
	h.cache[key] = string(out)
	return string(out)
}

// TestRunnableBlocks checks every command of README.md's runnable shell
// blocks: bin/<name> is a binary of cmd/, its subcommands exist, and every
// -flag it is given is one that binary (or subcommand) defines; make targets
// exist in the Makefile; anything else is a known tool.
func TestRunnableBlocks(t *testing.T) {
	blocks := runnableBlocks(t)
	require.GreaterOrEqual(t, len(blocks), 3, "README.md marks its tour and one-machine blocks ```%s", runnableInfo)

	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/...")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build ./cmd/...: %s", out)
	h := &helper{dir: dir, cache: map[string]string{}}
	makefile := readFile(t, "Makefile")

	checked := 0
	for _, block := range blocks {
		for _, l := range block {
			for _, words := range commands(l) {
				for len(words) > 0 && assignRE.MatchString(words[0]) {
					words = words[1:]
				}
				if len(words) == 0 {
					continue
				}
				checked++
				name := words[0]
				switch {
				case strings.HasPrefix(name, "bin/"):
					checkBinary(t, h, l, strings.TrimPrefix(name, "bin/"), words[1:])
				case name == "make":
					for _, target := range words[1:] {
						if assignRE.MatchString(target) || strings.HasPrefix(target, "-") {
							continue
						}
						require.Regexp(t, `(?m)^`+regexp.QuoteMeta(target)+`:`, makefile, "%q: no make target %q", l, target)
					}
				default:
					require.True(t, tools[name], "%q: %q is neither bin/<name>, make nor a known tool", l, name)
				}
			}
		}
	}
	require.Greater(t, checked, 10)
}

func checkBinary(t *testing.T, h *helper, l, name string, args []string) {
	t.Helper()
	require.FileExists(t, filepath.Join(h.dir, name), "%q: no cmd/%s", l, name)
	var sub []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		listing := h.help(t, name, sub)
		re := `(?m)^\s+(?:` + regexp.QuoteMeta(strings.Join(append([]string{name}, sub...), " ")) + ` )?` +
			regexp.QuoteMeta(args[0]) + `(\s|$)`
		if !regexp.MustCompile(re).MatchString(listing) {
			break // a positional argument, not a subcommand
		}
		sub = append(sub, args[0])
		args = args[1:]
	}
	defined := map[string]bool{"h": true, "help": true}
	for _, m := range flagRE.FindAllStringSubmatch(h.help(t, name, sub), -1) {
		defined[m[1]] = true
	}
	require.Greater(t, len(defined), 2, "%q: `%s %s -h` lists no flags", l, name, strings.Join(sub, " "))
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		require.True(t, defined[flag], "%q: %s %s has no flag -%s", l, name, strings.Join(sub, " "), flag)
	}
}

// TestDocsListEveryFlag checks that docs/<binary>.md names, in backquotes,
// every flag that the binary and its subcommands define, so that the flag
// tables moved out of the README lose none.
func TestDocsListEveryFlag(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/ingest", "./cmd/worker")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	h := &helper{dir: dir, cache: map[string]string{}}
	for _, c := range []struct {
		name string
		sub  []string
	}{
		{"ingest", nil}, {"worker", nil}, {"worker", []string{"replay"}}, {"worker", []string{"dlq", "list"}},
		{"worker", []string{"dlq", "redrive"}}, {"worker", []string{"reconcile"}}, {"worker", []string{"console"}},
	} {
		doc := readFile(t, filepath.Join("docs", c.name+".md"))
		for _, m := range flagRE.FindAllStringSubmatch(h.help(t, c.name, c.sub), -1) {
			require.Regexp(t, "`-"+regexp.QuoteMeta(m[1])+"[` ]", doc,
				"docs/%s.md lists no -%s (%s %s)", c.name, m[1], c.name, strings.Join(c.sub, " "))
		}
	}
}
