package deploytest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// repoRoot is the module's root: the directory holding go.mod, two levels
// up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(root, "go.mod"))
	require.NoError(t, err, "the repository root holds go.mod")
	return root
}

// readRepoFile reads path, relative to the repository root.
func readRepoFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), path))
	require.NoError(t, err)
	return string(b)
}

// readmeSection returns the "## <title>" section of README.md, up to the
// next "## " heading.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	readme := readRepoFile(t, "README.md")
	start := strings.Index(readme, "\n## "+title+"\n")
	require.GreaterOrEqual(t, start, 0, "README.md has a section \"## %s\"", title)
	section := readme[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	return section
}

// goModLine returns the first match of re's group 1 in go.mod.
func goModLine(t *testing.T, re *regexp.Regexp) (string, bool) {
	t.Helper()
	m := re.FindStringSubmatch(readRepoFile(t, "go.mod"))
	if m == nil {
		return "", false
	}
	return m[1], true
}

var (
	goDirective      = regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`)
	toolchainLine    = regexp.MustCompile(`(?m)^toolchain\s+go(\S+)\s*$`)
	natsServerModule = regexp.MustCompile(`(?m)^\s*(?:require\s+)?github\.com/nats-io/nats-server/v2\s+v(\S+)`)
)

// natsServerVersion is the nats-server release go.mod requires (and the
// tests run against), without the leading v: the NATS image's tag.
func natsServerVersion(t *testing.T) string {
	t.Helper()
	v, ok := goModLine(t, natsServerModule)
	require.True(t, ok, "go.mod requires github.com/nats-io/nats-server/v2")
	return v
}

// Commands are the paystream commands a container may run (the image's
// entrypoint, deploy/image/paystream, accepts these).
var Commands = []string{"ingest", "worker", "sandbox"}

// binaries holds the commands built once for the whole package.
var binaries struct {
	once sync.Once
	dir  string
	err  error
	out  []byte
}

// buildCommands builds ingest, worker, sandbox and gensecrets with one go
// build, once per test binary, and returns the directory holding them.
// The build cache makes it quick after `go vet` (or any build) of the
// same packages.
func buildCommands(t *testing.T) string {
	t.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "deploytest-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.dir = dir
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		for _, c := range Commands {
			args = append(args, "./cmd/"+c)
		}
		args = append(args, "./deploy/compose/gensecrets")
		cmd := exec.Command("go", args...)
		cmd.Dir = repoRoot(t)
		binaries.out, binaries.err = cmd.CombinedOutput()
	})
	require.NoError(t, binaries.err, "go build: %s", binaries.out)
	return binaries.dir
}

// TestMain removes the binaries buildCommands made.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// flagSpec is what a command's -h says about its flags: each name, and
// whether it takes a value (bool flags do not need one).
type flagSpec map[string]bool

// usageLine matches a flag's first line in Go's flag.PrintDefaults
// output: "  -name" for a bool flag, "  -name type" for the others.
var usageLine = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\s+(\S+))?`)

// flagSpecs caches commandFlags per command.
var flagSpecs = struct {
	sync.Mutex
	m map[string]flagSpec
}{m: map[string]flagSpec{}}

// commandFlags runs `<bin> -h` with an empty environment (the flags'
// defaults come from PAYSTREAM_* variables otherwise) and collects the
// flags its usage lists, once per command. The exit status is ignored:
// -h ends with flag.ErrHelp.
func commandFlags(t *testing.T, name string) flagSpec {
	t.Helper()
	flagSpecs.Lock()
	defer flagSpecs.Unlock()
	if spec, ok := flagSpecs.m[name]; ok {
		return spec
	}
	cmd := exec.Command(filepath.Join(buildCommands(t), name), "-h")
	cmd.Env = []string{}
	out, _ := cmd.CombinedOutput()
	spec := flagSpec{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// A one-letter bool flag's usage follows on the same line after a
		// tab; every other flag's first line is "  -name[ type]".
		first, _, _ := strings.Cut(sc.Text(), "\t")
		if m := usageLine.FindStringSubmatch(first); m != nil {
			spec[m[1]] = m[2] != ""
		}
	}
	require.NotEmpty(t, spec, "%s -h listed no flags:\n%s", name, out)
	flagSpecs.m[name] = spec
	return spec
}

// flagUse is one flag in a command line.
type flagUse struct {
	Name, Value string
}

// parseCommandLine parses args (a command's flags, the command's name
// excluded) against spec as Go's flag package would, and returns the flags
// set, and one error per unknown flag, missing value or positional
// argument (the commands take flags only).
func parseCommandLine(spec flagSpec, args []string) ([]flagUse, []error) {
	var (
		uses []flagUse
		errs []error
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			errs = append(errs, fmt.Errorf("%q is not a flag; the commands take flags only", a))
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		typed, ok := spec[name]
		if !ok {
			errs = append(errs, fmt.Errorf("-%s is not a flag of this command (it accepts -%s)", name, strings.Join(spec.names(), " -")))
			continue
		}
		if typed && !hasValue {
			if i+1 >= len(args) {
				errs = append(errs, fmt.Errorf("-%s needs a value", name))
				continue
			}
			i++
			value = args[i]
		}
		uses = append(uses, flagUse{Name: name, Value: value})
	}
	return uses, errs
}

// names lists the flags, sorted.
func (s flagSpec) names() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkCommandLine runs parseCommandLine and fails t with every error,
// prefixed by where.
func checkCommandLine(t *testing.T, where string, spec flagSpec, args []string) []flagUse {
	t.Helper()
	uses, errs := parseCommandLine(spec, args)
	for _, err := range errs {
		t.Errorf("%s: %v", where, err)
	}
	return uses
}

// flagValue returns the value of the last use of name, and whether it is
// set.
func flagValue(uses []flagUse, name string) (string, bool) {
	v, ok := "", false
	for _, u := range uses {
		if u.Name == name {
			v, ok = u.Value, true
		}
	}
	return v, ok
}

// TestCommandFlagsAreRead guards the -h parsing the other checks rely on:
// known flags of each kind are found, and a flag no command has is refused.
func TestCommandFlagsAreRead(t *testing.T) {
	ingest := commandFlags(t, "ingest")
	require.True(t, ingest["nats-url"], "a string flag takes a value")
	require.False(t, ingest["pprof"], "a bool flag needs none")
	require.Contains(t, commandFlags(t, "worker"), "metrics-listen")
	sandbox := commandFlags(t, "sandbox")
	require.True(t, sandbox["duplicates"], "a float flag takes a value")

	uses, errs := parseCommandLine(ingest, []string{"-nats-url", "nats://n1:4222", "-pprof", "--cobo-env=prod"})
	require.Empty(t, errs)
	require.Equal(t, []flagUse{{"nats-url", "nats://n1:4222"}, {"pprof", ""}, {"cobo-env", "prod"}}, uses)

	_, errs = parseCommandLine(ingest, []string{"-no-such-flag=1", "stray", "-nats-url"})
	require.Len(t, errs, 3)
	require.ErrorContains(t, errs[0], "-no-such-flag is not a flag")
	require.ErrorContains(t, errs[1], `"stray" is not a flag`)
	require.ErrorContains(t, errs[2], "-nats-url needs a value")
}
