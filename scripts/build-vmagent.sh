#!/usr/bin/env bash
# Build (or reuse) vmagent, the stream-aggregation tier (docs/cluster.md), and print its path.
#
#   bin="$(scripts/build-vmagent.sh)"      # stdout: the binary's path, nothing else
#
# `go install github.com/VictoriaMetrics/VictoriaMetrics/app/vmagent@$VERSION` (Apache-2.0),
# cached at ${OTEL_SPARSE_CACHE:-$HOME/.cache/otel_sparse}/vmagent/<key>/vmagent,
# key = sha256(version + `go version` output). The Go module and build caches are the normal
# ones (GOMODCACHE, GOCACHE), shared with scripts/build-collector.sh.
#
# Safe to run twice at once: a per-key flock, a temp GOBIN beside the cache entry and a rename
# (scripts/_cache.sh, shared with scripts/build-collector.sh).
# Cold and warm figures: docs/cluster.md ("Installing the aggregator").
# Environment:
#   OTEL_SPARSE_CACHE            cache root (default $HOME/.cache/otel_sparse)
#   OTEL_SPARSE_VMAGENT_VERSION  the VictoriaMetrics release (default below)
set -euo pipefail

# shellcheck source=scripts/_cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/_cache.sh"
cache_init build-vmagent

version="${OTEL_SPARSE_VMAGENT_VERSION:-v1.151.0}"
command -v go >/dev/null 2>&1 || die "go is not on PATH"
go_version="$(go version)"
key="$(printf '%s\n' "$version" "$go_version" | sha256sum | cut -c1-64)"

cache_open vmagent "$key" vmagent
cache_lock
cache_workdir

log "go install github.com/VictoriaMetrics/VictoriaMetrics/app/vmagent@$version ($go_version)"
GOBIN="$work" go install "github.com/VictoriaMetrics/VictoriaMetrics/app/vmagent@$version" >&2 ||
    die "go install failed; see the output above (Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
[[ -x "$work/vmagent" ]] || die "go install produced no $work/vmagent"
"$work/vmagent" -version >&2 || die "the built binary does not run"
cache_install "$work/vmagent"
