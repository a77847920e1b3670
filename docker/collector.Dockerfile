# syntax=docker/dockerfile:1
#
# The otelcol-sparse Collector distribution, built from collector-config/manifest.yaml with
# the OpenTelemetry Collector Builder (ocb), in a small image.
#
#   docker build -f docker/collector.Dockerfile -t otelcol-sparse:dev collector-config
#
# The build context is collector-config/ (only manifest.yaml is used). docker compose
# (docker/docker-compose.yml) builds it the same way. A cold build downloads and compiles
# the Collector's modules: about 15 minutes on 2 cores; the cache mounts make rebuilds fast.
#
# The builder version is read from the manifest (the version of the core otlpreceiver line),
# as scripts/build-collector.sh does, so the two never drift apart.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# The context is collector-config/. The manifest has no `replaces` at v0.145.0, so it is
# all the builder needs (if a later train needs placeholder modules again, copy them to
# /src/stubs, next to the output path /src/dist, as scripts/build-collector.sh does).
COPY manifest.yaml ./manifest.yaml
RUN --mount=type=cache,target=/root/.cache/go-build \
    --mount=type=cache,target=/go/pkg/mod \
    set -eu; \
    version="$(sed -n 's#^[[:space:]]*-[[:space:]]*gomod:[[:space:]]*go.opentelemetry.io/collector/receiver/otlpreceiver[[:space:]]\{1,\}\(v[0-9][0-9A-Za-z.+-]*\).*#\1#p' manifest.yaml | head -n 1)"; \
    test -n "$version" || { echo "no otlpreceiver version in manifest.yaml" >&2; exit 1; }; \
    GOBIN=/usr/local/bin go install "go.opentelemetry.io/collector/cmd/builder@${version}"; \
    sed "s#^dist:[[:space:]]*\$#dist:\n  output_path: /src/dist#" manifest.yaml > build-manifest.yaml; \
    grep -q "output_path: /src/dist" build-manifest.yaml; \
    CGO_ENABLED=0 builder --config build-manifest.yaml; \
    /src/dist/otelcol-sparse --version

# Static binary (CGO_ENABLED=0): distroless/static has CA certificates and tzdata, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/dist/otelcol-sparse /otelcol-sparse
USER 65532:65532
# 4317 OTLP/gRPC, 4318 OTLP/HTTP, 8888 own telemetry, 8889 prometheus exporter,
# 13133 health_check.
EXPOSE 4317 4318 8888 8889 13133
ENTRYPOINT ["/otelcol-sparse"]
CMD ["--config=/etc/otelcol-sparse/config.yaml"]
