package deploytest

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dockerfile is what the checks need of the Dockerfile.
type dockerfile struct {
	// Args are the global ARG defaults (before the first FROM).
	Args map[string]string
	// Stages in order; the last is the image.
	Stages []stage
}

// stage is one FROM ... [AS name] and its instructions.
type stage struct {
	From, Name string
	// Instructions are the stage's lines after FROM, continuations
	// joined, as {keyword, rest}.
	Instructions [][2]string
}

// parseDockerfile reads the Dockerfile's instructions: comments dropped,
// backslash continuations joined. It does not expand variables.
func parseDockerfile(t *testing.T, text string) dockerfile {
	t.Helper()
	df := dockerfile{Args: map[string]string{}}
	var logical []string
	cur := ""
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		logical = append(logical, cur+trimmed)
		cur = ""
	}
	for _, l := range logical {
		if l == "" {
			continue
		}
		kw, rest, _ := strings.Cut(l, " ")
		kw, rest = strings.ToUpper(kw), strings.TrimSpace(rest)
		switch {
		case kw == "FROM":
			fields := strings.Fields(rest)
			st := stage{From: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				st.Name = fields[2]
			}
			df.Stages = append(df.Stages, st)
		case len(df.Stages) == 0 && kw == "ARG":
			name, def, _ := strings.Cut(rest, "=")
			df.Args[name] = def
		case len(df.Stages) > 0:
			st := &df.Stages[len(df.Stages)-1]
			st.Instructions = append(st.Instructions, [2]string{kw, rest})
		}
	}
	require.NotEmpty(t, df.Stages, "the Dockerfile has a FROM")
	return df
}

// all returns the rest of every instruction kw of the stage.
func (s stage) all(kw string) []string {
	var out []string
	for _, in := range s.Instructions {
		if in[0] == kw {
			out = append(out, in[1])
		}
	}
	return out
}

// imageName is the name the Dockerfile gives its image: the value of the
// label io.paystream.image of the final stage.
func imageName(t *testing.T, df dockerfile) string {
	t.Helper()
	re := regexp.MustCompile(`io\.paystream\.image="([^"]+)"`)
	for _, l := range df.Stages[len(df.Stages)-1].all("LABEL") {
		if m := re.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	require.FailNow(t, "the final stage of the Dockerfile has no LABEL io.paystream.image naming the image")
	return ""
}

// imageCommands are the commands the final image holds: the binaries
// copied into /usr/local/bin besides the entrypoint.
func imageCommands(t *testing.T, df dockerfile) []string {
	t.Helper()
	var out []string
	for _, c := range df.Stages[len(df.Stages)-1].all("COPY") {
		fields := strings.Fields(c)
		if len(fields) < 3 || fields[len(fields)-1] != "/usr/local/bin/" {
			continue
		}
		for _, src := range fields[:len(fields)-1] {
			if strings.HasPrefix(src, "--") {
				continue
			}
			name := src[strings.LastIndex(src, "/")+1:]
			if name != "paystream" {
				out = append(out, name)
			}
		}
	}
	return out
}

// goBuild is one `go build` command line: its environment assignments,
// flags (with -o and its value left out: where the binaries go differs)
// and packages.
type goBuild struct {
	Env, Flags, Packages []string
}

// parseGoBuilds finds every `go build` (or `$(GO) build`) in a shell
// command line, splitting it at && ; and |.
func parseGoBuilds(cmdline string) []goBuild {
	var out []goBuild
	for _, part := range regexp.MustCompile(`&&|;|\|`).Split(cmdline, -1) {
		words := strings.Fields(part)
		var b goBuild
		i := 0
		for i < len(words) && regexp.MustCompile(`^[A-Z_]+=`).MatchString(words[i]) {
			b.Env = append(b.Env, words[i])
			i++
		}
		if i+1 >= len(words) || (words[i] != "go" && words[i] != "$(GO)") || words[i+1] != "build" {
			continue
		}
		for j := i + 2; j < len(words); j++ {
			w := words[j]
			switch {
			case w == "-o":
				j++
			case strings.HasPrefix(w, "-o="):
			case strings.HasPrefix(w, "-"):
				b.Flags = append(b.Flags, w)
			default:
				b.Packages = append(b.Packages, w)
			}
		}
		out = append(out, b)
	}
	return out
}

// makeRecipe returns the recipe lines of target in the Makefile.
func makeRecipe(t *testing.T, makefile, target string) []string {
	t.Helper()
	var lines []string
	in := false
	for _, l := range strings.Split(makefile, "\n") {
		switch {
		case strings.HasPrefix(l, target+":"):
			in = true
		case in && strings.HasPrefix(l, "\t"):
			lines = append(lines, strings.TrimSpace(l))
		case in:
			in = false
		}
	}
	require.NotEmpty(t, lines, "the Makefile has a recipe for %s", target)
	return lines
}

// makeVar returns the default of a `NAME ?= value` or `NAME := value`
// variable of the Makefile.
func makeVar(t *testing.T, makefile, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `\s*[?:]?=\s*(\S+)`).FindStringSubmatch(makefile)
	require.NotNil(t, m, "the Makefile sets %s", name)
	return m[1]
}

// versionParts splits "1.26.8" into numbers.
func versionParts(t *testing.T, v string) []int {
	t.Helper()
	var out []int
	for _, p := range strings.Split(v, ".") {
		n, err := strconv.Atoi(p)
		require.NoError(t, err, "version %q", v)
		out = append(out, n)
	}
	return out
}

// TestDockerfileBuildsAsMakeBuild checks that the image is built as `make
// build` builds: the same go build flags and packages, with the Go release
// go.mod names (its toolchain line if any, else its go line's major.minor
// release, at least that patch level), static.
func TestDockerfileBuildsAsMakeBuild(t *testing.T) {
	df := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	makefile := readRepoFile(t, "Makefile")

	var makeBuilds []goBuild
	for _, l := range makeRecipe(t, makefile, "build") {
		makeBuilds = append(makeBuilds, parseGoBuilds(l)...)
	}
	require.Len(t, makeBuilds, 1, "make build runs one go build")
	want := makeBuilds[0]

	build := df.Stages[0]
	require.Equal(t, "build", build.Name, "the first stage builds")
	var dockerBuilds []goBuild
	for _, run := range build.all("RUN") {
		dockerBuilds = append(dockerBuilds, parseGoBuilds(run)...)
	}
	require.NotEmpty(t, dockerBuilds, "the build stage runs go build")
	found := false
	for _, b := range dockerBuilds {
		require.Contains(t, b.Env, "CGO_ENABLED=0", "static binaries: every go build in the Dockerfile sets CGO_ENABLED=0 (%v)", b)
		require.Equal(t, want.Flags, b.Flags, "go build flags of the Dockerfile and of make build (%v)", b.Packages)
		if slices.Equal(b.Packages, want.Packages) {
			found = true
		}
	}
	require.True(t, found, "the Dockerfile builds %v as make build does; it builds %v", want.Packages, dockerBuilds)

	// The Go release.
	goVersion, ok := df.Args["GO_VERSION"]
	require.True(t, ok, "the Dockerfile names its Go release in ARG GO_VERSION")
	require.Contains(t, build.From, "golang:${GO_VERSION}", "the build stage uses the official Go image of that release")
	if tc, ok := goModLine(t, toolchainLine); ok {
		require.Equal(t, tc, goVersion, "go.mod's toolchain line and the Dockerfile's GO_VERSION")
	} else {
		modGo, ok := goModLine(t, goDirective)
		require.True(t, ok, "go.mod has a go line")
		have, need := versionParts(t, goVersion), versionParts(t, modGo)
		require.GreaterOrEqual(t, len(have), 2)
		require.Equal(t, need[:2], have[:2], "the Dockerfile's Go %s is the release of go.mod's go %s", goVersion, modGo)
		require.True(t, slices.Compare(have, need) >= 0, "the Dockerfile's Go %s is not older than go.mod's go %s", goVersion, modGo)
	}

	// The image: no shell needed, a non-root user, CA certificates, and
	// the entrypoint choosing the command.
	final := df.Stages[len(df.Stages)-1]
	require.Contains(t, []string{"scratch", "gcr.io/distroless/static-debian12:nonroot"}, final.From, "the final image is minimal")
	users := final.all("USER")
	require.NotEmpty(t, users, "the final image sets a USER")
	uid, _, _ := strings.Cut(users[len(users)-1], ":")
	n, err := strconv.Atoi(uid)
	require.NoError(t, err, "USER is numeric, so that runAsNonRoot can verify it")
	require.NotZero(t, n, "USER is not root")
	require.True(t, slices.ContainsFunc(final.all("COPY"), func(c string) bool { return strings.Contains(c, "ca-certificates.crt") }), "the image has CA certificates")
	entry := final.all("ENTRYPOINT")
	require.Len(t, entry, 1)
	var argv []string
	require.NoError(t, json.Unmarshal([]byte(entry[0]), &argv), "ENTRYPOINT in exec form (no shell)")
	require.Equal(t, []string{"/usr/local/bin/paystream"}, argv)
	require.Subset(t, imageCommands(t, df), Commands, "the image holds every command the entrypoint runs")

	// make image names the image as the Dockerfile does.
	require.Equal(t, imageName(t, df), makeVar(t, makefile, "IMAGE"), "make image's IMAGE and the Dockerfile's label io.paystream.image")
}

// TestParseGoBuilds guards the parser the check above relies on.
func TestParseGoBuilds(t *testing.T) {
	got := parseGoBuilds("cd x && CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/... ; echo")
	require.Equal(t, []goBuild{{Env: []string{"CGO_ENABLED=0"}, Flags: []string{"-trimpath"}, Packages: []string{"./cmd/..."}}}, got)
	got = parseGoBuilds("$(GO) build -o $(BIN)/ ./cmd/...")
	require.Equal(t, []goBuild{{Packages: []string{"./cmd/..."}}}, got)
	require.Empty(t, parseGoBuilds("go vet ./..."))
}
