// Package deploytest checks the deployment files statically, in `make
// test`: nothing is built into an image, started in a container or applied
// to a cluster.
//
//   - The Kubernetes overlays (deploy/k8s/overlays/*) are rendered with the
//     kustomize Go API and every workload is checked: probes, resources,
//     security context, no secret values inline, image names, the commands'
//     flags, listeners, NetworkPolicies, ServiceMonitors, and that KEDA and
//     an HPA never scale the same Deployment.
//   - The compose stack (deploy/compose/compose.yaml): every command's
//     flags against the binaries' own -h, the secrets against what
//     deploy/compose/gensecrets writes, the NATS nodes against deploy/nats.
//   - The Dockerfile against the Makefile (go build flags and packages) and
//     go.mod (the Go release).
//
// The package has tests only.
package deploytest
