package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/paystream/paystream/internal/allocation"
)

// composeFile is what the checks read of deploy/compose/compose.yaml (YAML
// anchors and merge keys resolved by the parser).
type composeFile struct {
	Services map[string]composeService `json:"services"`
	Secrets  map[string]struct {
		File string `json:"file"`
	} `json:"secrets"`
	Configs map[string]struct {
		File string `json:"file"`
	} `json:"configs"`
}

type composeService struct {
	Image       string            `json:"image"`
	Hostname    string            `json:"hostname"`
	Entrypoint  []string          `json:"entrypoint"`
	Command     []string          `json:"command"`
	User        string            `json:"user"`
	ReadOnly    bool              `json:"read_only"`
	CapDrop     []string          `json:"cap_drop"`
	SecurityOpt []string          `json:"security_opt"`
	Environment map[string]string `json:"environment"`
	Secrets     []string          `json:"secrets"`
	Volumes     []string          `json:"volumes"`
	Configs     []struct {
		Source string `json:"source"`
		Target string `json:"target"`
	} `json:"configs"`
}

const composeDir = "deploy/compose"

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var cf composeFile
	require.NoError(t, yaml.Unmarshal([]byte(readRepoFile(t, filepath.Join(composeDir, "compose.yaml"))), &cf),
		"compose.yaml parses (commands in exec form: lists, not strings)")
	require.NotEmpty(t, cf.Services)
	return cf
}

// generatedSecrets runs gensecrets into a temporary directory, as the
// README says to before `docker compose up`, and returns the names of the
// files it wrote.
func generatedSecrets(t *testing.T) map[string]bool {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "secrets")
	cmd := exec.Command(filepath.Join(buildCommands(t), "gensecrets"), "-out", dir, "-bcrypt-cost", "4")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "gensecrets: %s", out)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names
}

// secretEnvName matches environment variable names that would hold a
// secret.
func isSecretName(name string) bool {
	u := strings.ToUpper(name)
	if strings.Contains(u, "PUBKEY") {
		return false
	}
	for _, w := range []string{"PASSWORD", "TOKEN", "SECRET", "KEY", "CREDS", "ROUTES"} {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// TestComposeStack checks deploy/compose/compose.yaml: every paystream
// command's flags against the binary's -h, the credentials as Docker
// secrets that gensecrets writes, ingest and the workers on the 3-node
// cluster trusting the sandbox's key, and the NATS nodes on the configs of
// deploy/nats with the nats-server release the tests run.
func TestComposeStack(t *testing.T) {
	cf := loadCompose(t)
	df := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	image := imageName(t, df)
	inImage := imageCommands(t, df)
	generated := generatedSecrets(t)
	root := repoRoot(t)

	// The key ingest and the workers must trust: the sandbox's own.
	out, err := exec.Command(filepath.Join(buildCommands(t), "sandbox"), "-print-webhook-pubkey").Output()
	require.NoError(t, err)
	sandboxKey := strings.TrimSpace(string(out))

	for name, s := range cf.Secrets {
		require.True(t, generated[filepath.Base(s.File)], "secret %s: %s is not a file gensecrets writes (%v)", name, s.File, generated)
		require.Equal(t, "./secrets/"+filepath.Base(s.File), s.File, "secret %s: in deploy/compose/secrets, where gensecrets writes by default", name)
	}
	for name, c := range cf.Configs {
		_, err := os.Stat(filepath.Join(root, composeDir, c.File))
		require.NoError(t, err, "config %s", name)
	}

	count := map[string]int{}
	natsNodes := 0
	for name, s := range cf.Services {
		where := "service " + name
		for k, v := range s.Environment {
			require.False(t, isSecretName(k), "%s: %s=%q: credentials are Docker secrets, not environment values", where, k, v)
		}
		for _, sec := range s.Secrets {
			require.Contains(t, cf.Secrets, sec, "%s: secret %s is declared", where, sec)
		}
		require.True(t, s.ReadOnly, "%s: read_only", where)
		require.Equal(t, []string{"ALL"}, s.CapDrop, "%s: cap_drop ALL", where)
		require.Contains(t, s.SecurityOpt, "no-new-privileges:true", where)

		repo, _, _ := strings.Cut(s.Image, ":")
		if strings.HasPrefix(s.Image, "nats:") {
			natsNodes++
			require.Equal(t, "nats:"+natsServerVersion(t)+"-alpine", s.Image, "%s: the nats-server release of go.mod, which the tests run", where)
			require.Equal(t, name, s.Hostname, "%s: the host name the route URLs use", where)
			require.Equal(t, []string{"-c", "/etc/nats/" + name + ".conf"}, s.Command, "%s: the node's config of deploy/nats", where)
			require.Contains(t, s.Volumes, "../nats:/etc/nats:ro", "%s: deploy/nats mounted as it is", where)
			_, err := os.Stat(filepath.Join(root, "deploy", "nats", name+".conf"))
			require.NoError(t, err, where)
			require.Contains(t, s.Secrets, "nats-server-env", "%s: the hashes and routes come from a secret", where)
			for _, v := range s.Volumes {
				src, _, _ := strings.Cut(v, ":")
				if strings.HasPrefix(src, ".") {
					_, err := os.Stat(filepath.Join(root, composeDir, src))
					require.NoError(t, err, "%s: mounted %s", where, src)
				}
			}
			continue
		}

		require.Equal(t, image, repo, "%s: the image the Dockerfile names", where)
		require.NotEmpty(t, s.Command, "%s: a command", where)
		require.NotEqual(t, "", s.User, "%s: runs as the image's non-root user", where)
		require.NotContains(t, []string{"0", "root", "0:0"}, s.User, where)
		cmdName := s.Command[0]
		require.Contains(t, inImage, cmdName, "%s: runs a command the image holds", where)
		count[cmdName]++
		uses := checkCommandLine(t, where, commandFlags(t, cmdName), s.Command[1:])

		// Files named by flags exist in the container: secrets under
		// /run/secrets/<name>, configs at their target.
		for _, u := range uses {
			switch {
			case strings.HasPrefix(u.Value, "/run/secrets/"):
				sec := strings.TrimPrefix(u.Value, "/run/secrets/")
				require.Contains(t, s.Secrets, sec, "%s: -%s reads secret %s, which the service must mount", where, u.Name, sec)
			case strings.HasPrefix(u.Value, "/"):
				require.True(t, slices.ContainsFunc(s.Configs, func(c struct {
					Source string `json:"source"`
					Target string `json:"target"`
				}) bool {
					return c.Target == u.Value
				}), "%s: -%s=%s is mounted (configs)", where, u.Name, u.Value)
			}
			require.False(t, strings.HasSuffix(u.Name, "-file") && !strings.HasPrefix(u.Value, "/"), "%s: -%s is an absolute path", where, u.Name)
		}

		if cmdName == "ingest" || cmdName == "worker" {
			requireOnCluster(t, where, uses, "nats://n1:4222,nats://n2:4222,nats://n3:4222")
			key, _ := flagValue(uses, "cobo-pubkey")
			require.Equal(t, sandboxKey, key, "%s: trusts the sandbox's webhook key (sandbox -print-webhook-pubkey)", where)
			if cmdName == "worker" {
				rules, ok := flagValue(uses, "rules")
				require.True(t, ok, "%s: allocates, as make run does", where)
				for _, c := range s.Configs {
					if c.Target == rules {
						_, err := allocation.LoadRules(filepath.Join(root, composeDir, cf.Configs[c.Source].File))
						require.NoError(t, err, "%s: the rules file is valid", where)
					}
				}
			}
		}
	}
	require.Equal(t, 3, natsNodes, "a 3-node NATS cluster")
	require.Equal(t, map[string]int{"ingest": 1, "worker": 2, "sandbox": 1}, count, "ingest, two workers and the sandbox")
}

// requireOnCluster checks the flags that put ingest or a worker on the
// 3-node cluster with its own NATS user: all nodes listed, 3 replicas, a
// user and its password file, and a trusted Cobo key given.
func requireOnCluster(t *testing.T, where string, uses []flagUse, natsURL string) {
	t.Helper()
	url, _ := flagValue(uses, "nats-url")
	require.Equal(t, natsURL, url, "%s: every NATS node (never the embedded server)", where)
	replicas, _ := flagValue(uses, "stream-replicas")
	require.Equal(t, "3", replicas, "%s: -stream-replicas 3", where)
	_, user := flagValue(uses, "nats-user")
	_, pw := flagValue(uses, "nats-password-file")
	require.True(t, user && pw, "%s: -nats-user and -nats-password-file", where)
	_, env := flagValue(uses, "cobo-env")
	_, key := flagValue(uses, "cobo-pubkey")
	require.True(t, env || key, "%s: -cobo-env or -cobo-pubkey is required", where)
}
