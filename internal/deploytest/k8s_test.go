package deploytest

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/paystream/paystream/internal/events"
)

// Overlays are the deployable kustomizations: production scales the
// workers with KEDA, production-hpa with a plain HPA.
var Overlays = []string{"production", "production-hpa"}

// object is the part of every Kubernetes object the checks read.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	// Raw is the object as rendered.
	Raw []byte `json:"-"`
}

func (o object) String() string { return o.Kind + "/" + o.Metadata.Name }

type workload struct {
	object
	Spec struct {
		Replicas *int `json:"replicas"`
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec podSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type podSpec struct {
	AutomountServiceAccountToken *bool            `json:"automountServiceAccountToken"`
	SecurityContext              *securityContext `json:"securityContext"`
	InitContainers               []container      `json:"initContainers"`
	Containers                   []container      `json:"containers"`
	Volumes                      []struct {
		Name   string `json:"name"`
		Secret *struct {
			SecretName string `json:"secretName"`
		} `json:"secret"`
		ConfigMap *struct {
			Name string `json:"name"`
		} `json:"configMap"`
	} `json:"volumes"`
}

type securityContext struct {
	RunAsNonRoot             *bool `json:"runAsNonRoot"`
	RunAsUser                *int  `json:"runAsUser"`
	ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
	Capabilities             *struct {
		Drop []string `json:"drop"`
	} `json:"capabilities"`
}

type container struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `json:"name"`
				Key  string `json:"key"`
			} `json:"secretKeyRef"`
			FieldRef *struct {
				FieldPath string `json:"fieldPath"`
			} `json:"fieldRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	EnvFrom []struct {
		SecretRef *struct {
			Name string `json:"name"`
		} `json:"secretRef"`
	} `json:"envFrom"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	Resources struct {
		Requests map[string]string `json:"requests"`
		Limits   map[string]string `json:"limits"`
	} `json:"resources"`
	LivenessProbe   *probe           `json:"livenessProbe"`
	ReadinessProbe  *probe           `json:"readinessProbe"`
	SecurityContext *securityContext `json:"securityContext"`
	VolumeMounts    []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		// Port is a number or a container port's name.
		Port any `json:"port"`
	} `json:"httpGet"`
}

// portNumber resolves a probe's port (a number or a port name) in c.
func (c container) portNumber(port any) int {
	switch p := port.(type) {
	case float64:
		return int(p)
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
		n, _ := strconv.Atoi(p)
		return n
	}
	return 0
}

// mountedFrom returns the volume mounted at the directory holding file.
func (c container) mountedFrom(pod podSpec, file string) (vol string, ok bool) {
	dir := path.Dir(file)
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			return m.Name, true
		}
	}
	return "", false
}

type scaleTarget struct {
	object
	Spec struct {
		ScaleTargetRef struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type networkPolicy struct {
	object
	Spec struct {
		PodSelector labelSelector `json:"podSelector"`
		PolicyTypes []string      `json:"policyTypes"`
		Ingress     []struct {
			From []struct {
				PodSelector       *labelSelector `json:"podSelector"`
				NamespaceSelector *labelSelector `json:"namespaceSelector"`
				IPBlock           *struct {
					CIDR string `json:"cidr"`
				} `json:"ipBlock"`
			} `json:"from"`
			Ports []struct {
				Port any `json:"port"`
			} `json:"ports"`
		} `json:"ingress"`
	} `json:"spec"`
}

type serviceMonitor struct {
	object
	Spec struct {
		Selector  labelSelector `json:"selector"`
		Endpoints []struct {
			Port              string `json:"port"`
			BearerTokenSecret *struct {
				Name string `json:"name"`
				Key  string `json:"key"`
			} `json:"bearerTokenSecret"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type service struct {
	object
	Spec struct {
		Selector map[string]string `json:"selector"`
		Ports    []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort any    `json:"targetPort"`
		} `json:"ports"`
	} `json:"spec"`
}

type configMap struct {
	object
	Data map[string]string `json:"data"`
}

// rendered is one overlay's output.
type rendered struct {
	Overlay string
	Objects []object
}

// byKind decodes every object of kind into a T.
func byKind[T any](t *testing.T, r rendered, kind string) []T {
	t.Helper()
	var out []T
	for _, o := range r.Objects {
		if o.Kind != kind {
			continue
		}
		var v T
		require.NoError(t, yaml.Unmarshal(o.Raw, &v), "%s: %s", r.Overlay, o)
		out = append(out, v)
	}
	return out
}

// workloads decodes every object with a pod template.
func workloads(t *testing.T, r rendered) []workload {
	t.Helper()
	var out []workload
	for _, kind := range []string{"Deployment", "StatefulSet", "DaemonSet"} {
		out = append(out, byKind[workload](t, r, kind)...)
	}
	for _, o := range r.Objects {
		require.NotContains(t, []string{"Pod", "ReplicaSet", "Job", "CronJob"}, o.Kind, "%s: %s is not checked here; add its kind to workloads", r.Overlay, o)
	}
	return out
}

// renders caches render per overlay: the files do not change during a
// run.
var renders = struct {
	sync.Mutex
	m map[string]rendered
}{m: map[string]rendered{}}

// render builds deploy/k8s/overlays/<overlay> with the kustomize API, as
// `kubectl apply -k` (default options: no files outside the
// kustomizations, no plugins) would, once per overlay.
func render(t *testing.T, overlay string) rendered {
	t.Helper()
	renders.Lock()
	defer renders.Unlock()
	if r, ok := renders.m[overlay]; ok {
		return r
	}
	dir := filepath.Join(repoRoot(t), "deploy", "k8s", "overlays", overlay)
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err, "kustomize build %s", dir)
	r := rendered{Overlay: overlay}
	for _, res := range resMap.Resources() {
		raw, err := res.AsYAML()
		require.NoError(t, err)
		var o object
		require.NoError(t, yaml.Unmarshal(raw, &o))
		o.Raw = raw
		r.Objects = append(r.Objects, o)
	}
	require.NotEmpty(t, r.Objects)
	renders.m[overlay] = r
	return r
}

// renderAll renders every overlay once per test.
func renderAll(t *testing.T) []rendered {
	t.Helper()
	var out []rendered
	for _, o := range Overlays {
		out = append(out, render(t, o))
	}
	return out
}

// quantity parses a Kubernetes CPU or memory quantity into millicores or
// bytes (the suffixes used here: m, Ki, Mi, Gi, Ti, k, M, G).
func quantity(s string) (float64, error) {
	mult := map[string]float64{"m": 1e-3, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9}
	for _, suf := range []string{"Ki", "Mi", "Gi", "Ti", "m", "k", "M", "G"} {
		if strings.HasSuffix(s, suf) {
			n, err := strconv.ParseFloat(strings.TrimSuffix(s, suf), 64)
			if err != nil {
				return 0, fmt.Errorf("quantity %q: %w", s, err)
			}
			return n * mult[suf], nil
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("quantity %q: %w", s, err)
	}
	return n, nil
}

// Values that are secrets whatever their variable is called: a URL with a
// password (not a <placeholder>), a bcrypt hash, a PEM key.
var secretValue = regexp.MustCompile(`://[^/\s:@<>]+:[^/\s@<>]+@|\$2[aby]\$\d\d\$|-----BEGIN [A-Z ]*PRIVATE KEY-----`)

// TestKubernetesWorkloads renders each overlay and checks every container
// of every workload: liveness and readiness probes (paystream's on
// /healthz and /readyz of the private listener), requests and limits,
// non-root with a read-only root filesystem and no privilege escalation,
// no secret in an environment value or argument, and images: paystream's
// the Dockerfile's, pinned, running a command the image holds with flags
// the command accepts; NATS the nats-server release the tests run.
func TestKubernetesWorkloads(t *testing.T) {
	df := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	image := imageName(t, df)
	inImage := imageCommands(t, df)
	nats := "nats:" + natsServerVersion(t)

	for _, r := range renderAll(t) {
		ws := workloads(t, r)
		require.NotEmpty(t, ws)
		kinds := map[string]bool{}
		for _, w := range ws {
			kinds[w.Metadata.Name] = true
			pod := w.Spec.Template.Spec
			where := r.Overlay + ": " + w.String()
			require.Equal(t, "paystream", w.Spec.Template.Metadata.Labels["app.kubernetes.io/part-of"], "%s: pods carry app.kubernetes.io/part-of: paystream (the NATS NetworkPolicy admits those)", where)
			require.NotNil(t, pod.AutomountServiceAccountToken, where)
			require.False(t, *pod.AutomountServiceAccountToken, "%s: no API token mounted: nothing here talks to the API server", where)
			for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
				cw := where + " container " + c.Name
				checkResources(t, cw, c)
				checkSecurity(t, cw, pod, c)
				checkNoInlineSecrets(t, cw, c)
				require.NotNil(t, c.LivenessProbe, "%s: liveness probe", cw)
				require.NotNil(t, c.ReadinessProbe, "%s: readiness probe", cw)
				require.NotNil(t, c.LivenessProbe.HTTPGet, "%s: liveness probe over HTTP", cw)
				require.NotNil(t, c.ReadinessProbe.HTTPGet, "%s: readiness probe over HTTP", cw)

				repo, tag, _ := strings.Cut(c.Image, ":")
				switch {
				case repo == image:
					require.NotEmpty(t, tag, "%s: the overlay pins the image's tag", cw)
					require.NotEqual(t, "latest", tag, cw)
					require.Empty(t, c.Command, "%s: runs the image's entrypoint", cw)
					require.NotEmpty(t, c.Args, cw)
					require.Contains(t, inImage, c.Args[0], "%s: runs a command the image holds", cw)
					checkPaystreamContainer(t, cw, pod, c)
				case repo == "nats":
					require.Equal(t, nats, c.Image, "%s: the nats-server release of go.mod, which the tests run", cw)
					require.True(t, strings.HasPrefix(c.LivenessProbe.HTTPGet.Path, "/healthz"), "%s: NATS' /healthz", cw)
					require.True(t, strings.HasPrefix(c.ReadinessProbe.HTTPGet.Path, "/healthz"), "%s: NATS' /healthz", cw)
				case repo == "natsio/prometheus-nats-exporter":
					require.NotEmpty(t, tag, cw)
					require.NotEqual(t, "latest", tag, cw)
				default:
					require.Failf(t, "unknown image", "%s: image %q is neither the Dockerfile's (%s) nor a known third-party one", cw, c.Image, image)
				}
			}
		}
		require.True(t, kinds["ingest"] && kinds["worker"] && kinds["nats"], "%s: ingest, the workers and NATS", r.Overlay)

		for _, d := range byKind[workload](t, r, "Deployment") {
			if d.Metadata.Name == "ingest" {
				require.NotNil(t, d.Spec.Replicas, "%s: ingest's replicas", r.Overlay)
				require.GreaterOrEqual(t, *d.Spec.Replicas, 2, "%s: at least 2 ingest replicas", r.Overlay)
			}
		}
		for _, s := range byKind[workload](t, r, "StatefulSet") {
			if s.Metadata.Name == "nats" {
				require.Equal(t, 3, *s.Spec.Replicas, "%s: a 3-node NATS cluster", r.Overlay)
			}
		}
		pdbs := map[string]bool{}
		for _, p := range byKind[struct {
			object
			Spec struct {
				Selector labelSelector `json:"selector"`
			} `json:"spec"`
		}](t, r, "PodDisruptionBudget") {
			pdbs[p.Spec.Selector.MatchLabels["app.kubernetes.io/name"]] = true
		}
		require.True(t, pdbs["ingest"] && pdbs["nats"], "%s: PodDisruptionBudgets for ingest and NATS", r.Overlay)
	}
}

func checkResources(t *testing.T, where string, c container) {
	t.Helper()
	for _, res := range []string{"cpu", "memory"} {
		req, ok := c.Resources.Requests[res]
		require.True(t, ok, "%s: requests.%s", where, res)
		lim, ok := c.Resources.Limits[res]
		require.True(t, ok, "%s: limits.%s", where, res)
		r, err := quantity(req)
		require.NoError(t, err, where)
		l, err := quantity(lim)
		require.NoError(t, err, where)
		require.Positive(t, r, "%s: requests.%s", where, res)
		require.LessOrEqual(t, r, l, "%s: requests.%s %s above limits.%s %s", where, res, req, res, lim)
	}
}

func checkSecurity(t *testing.T, where string, pod podSpec, c container) {
	t.Helper()
	nonRoot := pod.SecurityContext != nil && pod.SecurityContext.RunAsNonRoot != nil && *pod.SecurityContext.RunAsNonRoot
	if c.SecurityContext != nil && c.SecurityContext.RunAsNonRoot != nil {
		nonRoot = *c.SecurityContext.RunAsNonRoot
	}
	require.True(t, nonRoot, "%s: runAsNonRoot", where)
	sc := c.SecurityContext
	require.NotNil(t, sc, "%s: securityContext", where)
	require.NotNil(t, sc.ReadOnlyRootFilesystem, "%s: readOnlyRootFilesystem", where)
	require.True(t, *sc.ReadOnlyRootFilesystem, "%s: readOnlyRootFilesystem", where)
	require.NotNil(t, sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation", where)
	require.False(t, *sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation", where)
	require.NotNil(t, sc.Capabilities, "%s: capabilities", where)
	require.Equal(t, []string{"ALL"}, sc.Capabilities.Drop, "%s: every capability dropped", where)
}

// checkNoInlineSecrets refuses secrets written into the manifest: an
// environment variable named like a secret must come from a Secret
// (secretKeyRef), or name a file (…_FILE with an absolute path); no value
// or argument may look like a secret; an argument named like a secret
// must name a file (-…-file).
func checkNoInlineSecrets(t *testing.T, where string, c container) {
	t.Helper()
	for _, e := range c.Env {
		require.False(t, secretValue.MatchString(e.Value), "%s: env %s holds a secret value", where, e.Name)
		if !isSecretName(e.Name) {
			continue
		}
		fromSecret := e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
		isPath := strings.HasSuffix(e.Name, "_FILE") && strings.HasPrefix(e.Value, "/")
		require.True(t, fromSecret || isPath, "%s: env %s must come from a Secret (valueFrom.secretKeyRef), not a literal value", where, e.Name)
	}
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		require.False(t, secretValue.MatchString(a), "%s: argument %q holds a secret", where, a)
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && hasValue && isSecretName(name) {
			require.True(t, strings.HasSuffix(name, "-file") && strings.HasPrefix(value, "/"), "%s: -%s: secrets are passed as files (-…-file=/path)", where, name)
		}
	}
}

// checkPaystreamContainer checks ingest's and the workers' command lines:
// flags the command accepts; the cluster, its user and a Cobo key; files
// read from mounted Secrets (ConfigMaps for the rules); private listeners
// bound to the pod's address; probes on that listener's /healthz and
// /readyz.
func checkPaystreamContainer(t *testing.T, where string, pod podSpec, c container) {
	t.Helper()
	cmd := c.Args[0]
	uses := checkCommandLine(t, where, commandFlags(t, cmd), c.Args[1:])
	volumes := map[string]string{} // volume name -> "secret:<name>" or "configmap:<name>"
	for _, v := range pod.Volumes {
		switch {
		case v.Secret != nil:
			volumes[v.Name] = "secret:" + v.Secret.SecretName
		case v.ConfigMap != nil:
			volumes[v.Name] = "configmap:" + v.ConfigMap.Name
		}
	}
	for _, u := range uses {
		if !strings.HasSuffix(u.Name, "-file") && u.Name != "rules" {
			continue
		}
		vol, ok := c.mountedFrom(pod, u.Value)
		require.True(t, ok, "%s: -%s=%s is on a mounted volume", where, u.Name, u.Value)
		want := "secret:"
		if u.Name == "rules" {
			want = "configmap:"
		}
		require.True(t, strings.HasPrefix(volumes[vol], want), "%s: -%s reads from a %s volume, got %q", where, u.Name, strings.TrimSuffix(want, ":"), volumes[vol])
	}

	private := map[string]string{"ingest": "admin-listen", "worker": "metrics-listen"}[cmd]
	if private == "" {
		return
	}
	requireOnCluster(t, where, uses, "nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222")
	if env, ok := flagValue(uses, "cobo-env"); ok {
		require.Equal(t, "prod", env, "%s: Cobo's production key", where)
	}
	_, pubkey := flagValue(uses, "cobo-pubkey")
	require.False(t, pubkey, "%s: no pinned test key in production", where)

	listen, ok := flagValue(uses, private)
	require.True(t, ok, "%s: -%s set", where, private)
	host, portStr, found := strings.Cut(listen, ":")
	require.True(t, found, "%s: -%s=%s is host:port", where, private, listen)
	require.Equal(t, "$(POD_IP)", host, "%s: -%s binds the pod's address", where, private)
	podIP := slices.ContainsFunc(c.Env, func(e struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `json:"name"`
				Key  string `json:"key"`
			} `json:"secretKeyRef"`
			FieldRef *struct {
				FieldPath string `json:"fieldPath"`
			} `json:"fieldRef"`
		} `json:"valueFrom"`
	}) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	})
	require.True(t, podIP, "%s: POD_IP from the downward API (status.podIP)", where)
	port, err := strconv.Atoi(portStr)
	require.NoError(t, err, where)
	require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path, "%s: liveness on /healthz", where)
	require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path, "%s: readiness on /readyz", where)
	require.Equal(t, port, c.portNumber(c.LivenessProbe.HTTPGet.Port), "%s: liveness probes -%s", where, private)
	require.Equal(t, port, c.portNumber(c.ReadinessProbe.HTTPGet.Port), "%s: readiness probes -%s", where, private)
}

// TestKubernetesHoldsNoSecrets checks that no overlay creates a Secret (the
// operator creates them, README.md, "Deploying") and that no ConfigMap
// holds a secret value; and that the README's steps create every Secret
// and ConfigMap the workloads use and the overlays do not.
func TestKubernetesHoldsNoSecrets(t *testing.T) {
	readme := readmeSection(t, "Deploying")
	for _, r := range renderAll(t) {
		generated := map[string]bool{}
		for _, o := range r.Objects {
			require.NotEqual(t, "Secret", o.Kind, "%s: %s: Secrets are created by the operator, never committed", r.Overlay, o)
			if o.Kind == "ConfigMap" {
				generated[o.Metadata.Name] = true
			}
		}
		for _, cm := range byKind[configMap](t, r, "ConfigMap") {
			for k, v := range cm.Data {
				require.False(t, secretValue.MatchString(v), "%s: %s key %s holds a secret value", r.Overlay, cm, k)
			}
		}

		secrets, configMaps := map[string]bool{}, map[string]bool{}
		for _, w := range workloads(t, r) {
			for _, v := range w.Spec.Template.Spec.Volumes {
				if v.Secret != nil {
					secrets[v.Secret.SecretName] = true
				}
				if v.ConfigMap != nil && !generated[v.ConfigMap.Name] {
					configMaps[v.ConfigMap.Name] = true
				}
			}
			for _, c := range w.Spec.Template.Spec.Containers {
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						secrets[e.ValueFrom.SecretKeyRef.Name] = true
					}
				}
				for _, e := range c.EnvFrom {
					if e.SecretRef != nil {
						secrets[e.SecretRef.Name] = true
					}
				}
			}
		}
		for _, sm := range byKind[serviceMonitor](t, r, "ServiceMonitor") {
			for _, e := range sm.Spec.Endpoints {
				if e.BearerTokenSecret != nil {
					secrets[e.BearerTokenSecret.Name] = true
				}
			}
		}
		require.NotEmpty(t, secrets)
		for name := range secrets {
			re := regexp.MustCompile(`kubectl (-n \S+ )?create secret generic ` + regexp.QuoteMeta(name) + `\s`)
			require.True(t, re.MatchString(readme), "%s: README.md's \"Deploying\" has no `kubectl create secret generic %s`", r.Overlay, name)
		}
		for name := range configMaps {
			re := regexp.MustCompile(`kubectl (-n \S+ )?create configmap ` + regexp.QuoteMeta(name) + `\s`)
			require.True(t, re.MatchString(readme), "%s: README.md's \"Deploying\" has no `kubectl create configmap %s`", r.Overlay, name)
		}
	}
}

// TestKubernetesScaling checks that the workers are scaled by KEDA in
// production and by an HPA in production-hpa, never both on one
// Deployment, and that a scaled Deployment leaves its replica count to the
// scaler.
func TestKubernetesScaling(t *testing.T) {
	for _, r := range renderAll(t) {
		keda := map[string]bool{}
		for _, so := range byKind[scaleTarget](t, r, "ScaledObject") {
			ref := so.Spec.ScaleTargetRef
			require.Contains(t, []string{"", "Deployment"}, ref.Kind, "%s: %s", r.Overlay, so)
			keda[ref.Name] = true
			for _, tr := range so.Spec.Triggers {
				if tr.Type != "nats-jetstream" {
					continue
				}
				require.Equal(t, "PAYSTREAM", tr.Metadata["account"], "%s: %s: the account of deploy/nats/accounts.conf", r.Overlay, so)
				require.Equal(t, events.StreamName, tr.Metadata["stream"], "%s: %s", r.Overlay, so)
				require.Equal(t, events.ConsumerName, tr.Metadata["consumer"], "%s: %s: the workers' durable consumer", r.Overlay, so)
				require.Equal(t, "nats."+so.Metadata.Namespace+".svc.cluster.local:8222", tr.Metadata["natsServerMonitoringEndpoint"],
					"%s: %s: the monitoring port of the NATS Service in the overlay's namespace", r.Overlay, so)
			}
		}
		hpa := map[string]bool{}
		for _, h := range byKind[scaleTarget](t, r, "HorizontalPodAutoscaler") {
			require.Equal(t, "Deployment", h.Spec.ScaleTargetRef.Kind, "%s: %s", r.Overlay, h)
			name := h.Spec.ScaleTargetRef.Name
			require.False(t, keda[name], "%s: Deployment %s is scaled by KEDA and by HPA %s: they would fight over its replicas", r.Overlay, name, h.Metadata.Name)
			hpa[name] = true
		}
		switch r.Overlay {
		case "production":
			require.True(t, keda["worker"], "production: KEDA scales the workers")
			require.Empty(t, hpa, "production: no HPA beside KEDA")
		case "production-hpa":
			require.True(t, hpa["worker"], "production-hpa: an HPA scales the workers")
			require.Empty(t, keda, "production-hpa: no KEDA")
		}
		for _, d := range byKind[workload](t, r, "Deployment") {
			if keda[d.Metadata.Name] || hpa[d.Metadata.Name] {
				require.Nil(t, d.Spec.Replicas, "%s: %s is autoscaled: spec.replicas would reset it at every apply", r.Overlay, d)
			}
		}
	}
}

// TestKubernetesNetworkPolicies checks that everything is denied unless a
// policy allows it; that only ingest's webhook port (its -listen) is open
// to any source; that NATS clients are paystream's pods only; and that
// every ServiceMonitor of a paystream listener sends the token the pods
// read (bearerTokenSecret naming the Secret mounted for
// -admin-token-file / -metrics-token-file).
func TestKubernetesNetworkPolicies(t *testing.T) {
	for _, r := range renderAll(t) {
		denyAll := false
		for _, np := range byKind[networkPolicy](t, r, "NetworkPolicy") {
			where := r.Overlay + ": " + np.String()
			require.Contains(t, np.Spec.PolicyTypes, "Ingress", where)
			sel := np.Spec.PodSelector.MatchLabels
			if len(sel) == 0 && len(np.Spec.Ingress) == 0 {
				denyAll = true
			}
			require.False(t, len(sel) == 0 && len(np.Spec.Ingress) > 0, "%s: a policy allowing traffic to every pod", where)
			for _, rule := range np.Spec.Ingress {
				require.NotEmpty(t, rule.Ports, "%s: a rule without ports opens every port", where)
				open := len(rule.From) == 0
				for _, f := range rule.From {
					if f.IPBlock != nil || (f.NamespaceSelector != nil && len(f.NamespaceSelector.MatchLabels) == 0) {
						open = true
					}
				}
				ports := []int{}
				for _, p := range rule.Ports {
					n, ok := p.Port.(float64)
					require.True(t, ok, "%s: ports by number", where)
					ports = append(ports, int(n))
				}
				if open {
					require.Equal(t, "ingest", sel["app.kubernetes.io/name"], "%s: only ingest is reachable from anywhere", where)
					require.Equal(t, []int{8080}, ports, "%s: only the webhook port is reachable from anywhere", where)
				}
				if sel["app.kubernetes.io/name"] == "nats" && slices.Contains(ports, 4222) {
					for _, f := range rule.From {
						require.Nil(t, f.NamespaceSelector, "%s: NATS clients come from this namespace only", where)
						require.NotNil(t, f.PodSelector, where)
						require.Equal(t, "paystream", f.PodSelector.MatchLabels["app.kubernetes.io/part-of"], "%s: NATS clients are paystream's pods", where)
					}
				}
			}
		}
		require.True(t, denyAll, "%s: a default-deny ingress policy", r.Overlay)

		// The webhook port is ingest's -listen.
		for _, d := range byKind[workload](t, r, "Deployment") {
			for _, c := range d.Spec.Template.Spec.Containers {
				if len(c.Args) > 0 && c.Args[0] == "ingest" {
					uses, _ := parseCommandLine(commandFlags(t, "ingest"), c.Args[1:])
					listen, _ := flagValue(uses, "listen")
					require.Equal(t, ":8080", listen, "%s: the webhook listener the policies open", r.Overlay)
				}
			}
		}
		checkServiceMonitors(t, r)
	}
}

func checkServiceMonitors(t *testing.T, r rendered) {
	t.Helper()
	services := byKind[service](t, r, "Service")
	// token secret and key per app, from the token file flags.
	tokens := map[string][2]string{}
	for _, d := range byKind[workload](t, r, "Deployment") {
		pod := d.Spec.Template.Spec
		for _, c := range pod.Containers {
			if len(c.Args) == 0 {
				continue
			}
			uses, _ := parseCommandLine(commandFlags(t, c.Args[0]), c.Args[1:])
			for _, flag := range []string{"admin-token-file", "metrics-token-file"} {
				file, ok := flagValue(uses, flag)
				if !ok {
					continue
				}
				vol, _ := c.mountedFrom(pod, file)
				for _, v := range pod.Volumes {
					if v.Name == vol && v.Secret != nil {
						tokens[d.Spec.Template.Metadata.Labels["app.kubernetes.io/name"]] = [2]string{v.Secret.SecretName, path.Base(file)}
					}
				}
			}
		}
	}
	require.Len(t, tokens, 2, "%s: ingest and the workers protect their metrics with a token file from a Secret", r.Overlay)

	monitored := map[string]bool{}
	for _, sm := range byKind[serviceMonitor](t, r, "ServiceMonitor") {
		where := r.Overlay + ": " + sm.String()
		app := sm.Spec.Selector.MatchLabels["app.kubernetes.io/name"]
		matched := false
		for _, s := range services {
			if labelsMatch(sm.Spec.Selector.MatchLabels, s.Metadata.Labels) {
				matched = true
				for _, e := range sm.Spec.Endpoints {
					require.True(t, slices.ContainsFunc(s.Spec.Ports, func(p struct {
						Name       string `json:"name"`
						Port       int    `json:"port"`
						TargetPort any    `json:"targetPort"`
					}) bool {
						return p.Name == e.Port
					}), "%s: endpoint port %s is a port of Service %s", where, e.Port, s.Metadata.Name)
				}
			}
		}
		require.True(t, matched, "%s: selects a Service", where)
		monitored[app] = true
		tok, protected := tokens[app]
		for _, e := range sm.Spec.Endpoints {
			if !protected {
				continue
			}
			require.NotNil(t, e.BearerTokenSecret, "%s: the metrics need the token", where)
			require.Equal(t, tok, [2]string{e.BearerTokenSecret.Name, e.BearerTokenSecret.Key}, "%s: the token the pods read", where)
		}
	}
	require.True(t, monitored["ingest"] && monitored["worker"] && monitored["nats"], "%s: ServiceMonitors for the jobs of deploy/prometheus/prometheus.yml", r.Overlay)
}

// labelsMatch reports whether every selector label is in labels.
func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
