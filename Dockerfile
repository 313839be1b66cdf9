# syntax=docker/dockerfile:1
#
# One image for ingest, worker and the sandbox:
#
#   docker build -t ghcr.io/paystream/paystream:dev .        (or: make image)
#   docker run --rm ghcr.io/paystream/paystream:dev ingest -h
#   docker run --rm ghcr.io/paystream/paystream:dev worker -h
#
# The build runs the command `make build` runs, with the Go release go.mod
# names (internal/deploytest checks both stay in step), and CGO_ENABLED=0
# so that the binaries are static. The final image holds the binaries, the
# CA certificates and a passwd entry for the non-root user: no shell, no
# package manager.

# Go release: the one go.mod's `go` line names (same major.minor, not older).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# `make build`, static: ingest, worker, sandbox and the other commands.
RUN CGO_ENABLED=0 go build -o /out/ ./cmd/...
# The entrypoint that picks the command (deploy/image/paystream).
RUN CGO_ENABLED=0 go build -o /out/ ./deploy/image/paystream
# The unprivileged user the final image runs as (65532, as distroless'
# "nonroot"), without a shell.
RUN echo 'paystream:x:65532:65532:paystream:/nonexistent:/sbin/nologin' > /out/passwd \
 && echo 'paystream:x:65532:' > /out/group

FROM scratch
# The name the manifests in deploy/k8s and deploy/compose give this image
# (internal/deploytest checks that they agree).
LABEL io.paystream.image="ghcr.io/paystream/paystream" \
      org.opencontainers.image.title="paystream" \
      org.opencontainers.image.description="paystream: Cobo webhook ingest, workers and the provider sandbox" \
      org.opencontainers.image.source="https://github.com/paystream/paystream"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/paystream /out/ingest /out/worker /out/sandbox /usr/local/bin/
USER 65532:65532
# ingest and the worker listen here by default (the admin and metrics
# listeners are on loopback unless told otherwise).
EXPOSE 8080
# `<image> ingest|worker|sandbox [flags]` runs that command as PID 1.
ENTRYPOINT ["/usr/local/bin/paystream"]
CMD ["-h"]
