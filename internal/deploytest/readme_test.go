package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/paystream/paystream/internal/ingest"
)

// ingressExample is what the check reads of the README's Ingress.
type ingressExample struct {
	object
	Spec struct {
		TLS   []struct{} `json:"tls"`
		Rules []struct {
			HTTP struct {
				Paths []struct {
					Path    string `json:"path"`
					Backend struct {
						Service struct {
							Name string `json:"name"`
							Port struct {
								Name   string `json:"name"`
								Number int    `json:"number"`
							} `json:"port"`
						} `json:"service"`
					} `json:"backend"`
				} `json:"paths"`
			} `json:"http"`
		} `json:"rules"`
	} `json:"spec"`
}

// TestReadmeIngressReachesTheWebhook checks the Ingress example of the
// README's "Deploying" section against the rendered manifests: TLS, only
// ingest's webhook path, on a port of the Service ingest that leads to
// ingest's -listen; and that the section tells nginx users about
// underscores and says which checks are static.
func TestReadmeIngressReachesTheWebhook(t *testing.T) {
	section := readmeSection(t, "Deploying")
	require.Contains(t, section, "underscores_in_headers on")
	require.Contains(t, section, "statically")

	var ing ingressExample
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		if strings.Contains(m[1], "kind: Ingress") {
			require.NoError(t, yaml.Unmarshal([]byte(m[1]), &ing))
		}
	}
	require.Equal(t, "Ingress", ing.Kind, "the section has an Ingress example")
	require.NotEmpty(t, ing.Spec.TLS, "the Ingress terminates TLS")

	r := render(t, "production")
	require.Equal(t, r.Objects[0].Metadata.Namespace, ing.Metadata.Namespace, "the Ingress is in the overlay's namespace")
	// The container port ingest's -listen opens, by name.
	webhookPortName := ""
	for _, d := range byKind[workload](t, r, "Deployment") {
		for _, c := range d.Spec.Template.Spec.Containers {
			if len(c.Args) == 0 || c.Args[0] != "ingest" {
				continue
			}
			uses, _ := parseCommandLine(commandFlags(t, "ingest"), c.Args[1:])
			listen, _ := flagValue(uses, "listen")
			_, port, _ := strings.Cut(listen, ":")
			n, err := strconv.Atoi(port)
			require.NoError(t, err, "ingest -listen=%s", listen)
			for _, p := range c.Ports {
				if p.ContainerPort == n {
					webhookPortName = p.Name
				}
			}
		}
	}
	require.NotEmpty(t, webhookPortName, "ingest names the container port of -listen")

	paths := 0
	for _, rule := range ing.Spec.Rules {
		for _, p := range rule.HTTP.Paths {
			paths++
			require.Equal(t, ingest.WebhookPath, p.Path, "only the webhook path is routed")
			b := p.Backend.Service
			require.Equal(t, "ingest", b.Name)
			found := false
			for _, s := range byKind[service](t, r, "Service") {
				if s.Metadata.Name != b.Name {
					continue
				}
				for _, sp := range s.Spec.Ports {
					if (b.Port.Name != "" && sp.Name == b.Port.Name) || (b.Port.Number != 0 && sp.Port == b.Port.Number) {
						found = true
						target, ok := sp.TargetPort.(string)
						require.True(t, ok, "Service ingest targets a named port")
						require.Equal(t, webhookPortName, target, "Service ingest leads to ingest's -listen")
					}
				}
			}
			require.True(t, found, "the Ingress backend is a port of Service ingest")
		}
	}
	require.Equal(t, 1, paths)
}

// TestComposeNATSEntrypointExportsLiterally runs the compose stack's NATS
// entrypoint with a stand-in nats-server, checking that a bcrypt hash's $
// signs and a route list with spaces reach the server's environment as
// written, and that the arguments are passed on.
func TestComposeNATSEntrypointExportsLiterally(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on this machine")
	}
	dir := t.TempDir()
	envFile := filepath.Join(dir, "nats-server-env")
	hash := "$2a$11$abcdefghijklmnopqrstuv/0123456789ABCDEFGHIJKLMNOPQRS"
	routes := "[nats-route://route:pw@n1:6222, nats-route://route:pw@n2:6222]"
	require.NoError(t, os.WriteFile(envFile, []byte("# comment\nPAYSTREAM_NATS_INGEST_PASSWORD="+hash+"\n\nPAYSTREAM_NATS_ROUTES="+routes), 0o600))
	script := readRepoFile(t, filepath.Join(composeDir, "nats-entrypoint.sh"))
	require.Contains(t, script, "/run/secrets/nats-server-env", "reads the Docker secret")
	script = strings.ReplaceAll(script, "/run/secrets/nats-server-env", envFile)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "entrypoint.sh"), []byte(script), 0o700))
	stub := "#!/bin/sh\necho \"args=$*\"\necho \"ingest=$PAYSTREAM_NATS_INGEST_PASSWORD\"\necho \"routes=$PAYSTREAM_NATS_ROUTES\"\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nats-server"), []byte(stub), 0o700))

	cmd := exec.Command(sh, filepath.Join(dir, "entrypoint.sh"), "-c", "/etc/nats/n1.conf")
	cmd.Env = []string{"PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "args=-c /etc/nats/n1.conf\ningest="+hash+"\nroutes="+routes+"\n", string(out))
}
