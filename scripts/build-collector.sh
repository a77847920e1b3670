#!/usr/bin/env bash
# Build (or reuse) the otelcol-sparse Collector distribution and print its path.
#
#   bin="$(scripts/build-collector.sh)"      # stdout: the binary's path, nothing else
#
# The builder (ocb) comes from the Go module proxy at the version of the core otlpreceiver
# in collector-config/manifest.yaml (one release train). The binary is cached at
#   ${OTEL_SPARSE_CACHE:-$HOME/.cache/otel_sparse}/otelcol/<key>/otelcol-sparse
# key = sha256(manifest contents + `go version` output + builder version).
# The Go module and build caches are the normal ones (GOMODCACHE, GOCACHE), so a second
# clone on the same machine rebuilds nothing it already compiled.
#
# Safe to run twice at once: a build holds a per-key flock, compiles into a temp dir beside
# the cache entry and renames the binary into place, so a reader never sees half a file
# (scripts/_cache.sh, shared with scripts/build-vmagent.sh).
#
# Measured on the 2-core machine CI uses (Go 1.26.8, ocb v0.145.0, 2026-11-25), with
# GOMODCACHE=$(mktemp -d) GOCACHE=$(mktemp -d) OTEL_SPARSE_CACHE=$(mktemp -d):
#   cold (all caches empty; builder install, ~410 module downloads = 1.4 GB GOMODCACHE,
#        0.9 GB GOCACHE, compile and link): 268 s on a nearly quiet machine, 545-556 s
#        with other jobs running on it (docs/collector.md)
#   warm (cache entry present): 0.02-0.03 s
#   new cache entry, warm Go caches (new OTEL_SPARSE_CACHE, or a changed key whose modules
#        are already compiled): 4.4 s
# Logs go to stderr. Environment:
#   OTEL_SPARSE_CACHE            cache root (default $HOME/.cache/otel_sparse)
#   OTEL_SPARSE_BUILDER_VERSION  override the builder version taken from the manifest
#   OTEL_SPARSE_MANIFEST         build another manifest (default collector-config/manifest.yaml)
set -euo pipefail

# shellcheck source=scripts/_cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/_cache.sh"
cache_init build-collector

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(dirname "$script_dir")"
manifest="${OTEL_SPARSE_MANIFEST:-$repo_root/collector-config/manifest.yaml}"
[[ -f "$manifest" ]] || die "manifest not found: $manifest"
command -v go >/dev/null 2>&1 || die "go is not on PATH (needs Go >= 1.25)"

builder_version="${OTEL_SPARSE_BUILDER_VERSION:-$(
    sed -n 's#^[[:space:]]*-[[:space:]]*gomod:[[:space:]]*go.opentelemetry.io/collector/receiver/otlpreceiver[[:space:]]\{1,\}\(v[0-9][0-9A-Za-z.+-]*\).*#\1#p' \
        "$manifest" | head -n 1
)}"
[[ -n "$builder_version" ]] ||
    die "cannot read the builder version (the otlpreceiver line) from $manifest"

go_version="$(go version)"
key="$({
    cat "$manifest"
    printf '%s\n' "$go_version" "$builder_version"
} | sha256sum | cut -c1-64)"

cache_open otelcol "$key" otelcol-sparse
cache_lock
cache_workdir

# The builder, cached per version.
builder_dir="$cache_root/builder/$builder_version"
builder="$builder_dir/builder"
if [[ ! -x "$builder" ]]; then
    log "installing go.opentelemetry.io/collector/cmd/builder@$builder_version"
    mkdir -p "$builder_dir"
    GOBIN="$work/gobin" go install "go.opentelemetry.io/collector/cmd/builder@$builder_version"
    mv -f "$work/gobin/builder" "$builder"
fi

# The manifest with output_path pointing into the temp dir. If the manifest has `replaces`
# onto local placeholder modules (../stubs/<name>), they live in stubs/ next to it; the
# v0.145.0 manifest has none, so collector-config/stubs/ does not exist.
stubs="$(dirname "$manifest")/stubs"
if [[ -d "$stubs" ]]; then
    cp -R "$stubs" "$work/stubs"
fi
sed "s#^dist:[[:space:]]*\$#dist:\n  output_path: $work/dist#" "$manifest" >"$work/manifest.yaml"
grep -q "output_path: $work/dist" "$work/manifest.yaml" ||
    die "manifest has no top-level 'dist:' line: $manifest"

log "building otelcol-sparse (key $key) with builder $builder_version, $go_version"
log "a cold build (empty Go caches) takes 4-10 minutes on 2 cores"
"$builder" --config "$work/manifest.yaml" >&2 ||
    die "the builder failed; see the output above (Go module proxy reachable? GOPROXY=$(go env GOPROXY))"

[[ -x "$work/dist/otelcol-sparse" ]] || die "the builder produced no $work/dist/otelcol-sparse"
"$work/dist/otelcol-sparse" --version >&2 || die "the built binary does not run"

cache_install "$work/dist/otelcol-sparse"
