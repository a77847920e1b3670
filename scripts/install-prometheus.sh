#!/usr/bin/env bash
# Install Prometheus and promtool from Debian (package `prometheus`, 2.42 on Debian 12/13)
# for the integration tests. Idempotent: does nothing when both binaries exist.
#
# The package's postinst would start prometheus.service where systemd runs; policy-rc.d
# forbids that during the install, and any prometheus service or process the install did
# start is stopped afterwards, so nothing is left listening on :9090.
set -euo pipefail

log() { printf 'install-prometheus: %s\n' "$*" >&2; }

if [[ -x /usr/bin/prometheus && -x /usr/bin/promtool ]]; then
    log "already installed: $(/usr/bin/prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
        log "error: not root and no sudo; install the Debian package 'prometheus' by hand"
        exit 1
    }
    sudo=(sudo)
fi

# Forbid service starts during the install (Debian's invoke-rc.d honours policy-rc.d).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    added_policy=1
fi
cleanup() {
    if [[ "$added_policy" -eq 1 ]]; then
        "${sudo[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
"${sudo[@]}" apt-get update -q >&2
log "apt-get install prometheus"
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus >&2

# Leave nothing running: stop the service where systemd manages it, and any daemon the
# package started (the Debian package runs it as user 'prometheus').
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${sudo[@]}" systemctl stop prometheus.service >/dev/null 2>&1 || true
    "${sudo[@]}" systemctl disable prometheus.service >/dev/null 2>&1 || true
fi
if command -v pgrep >/dev/null 2>&1; then
    for pid in $(pgrep -u prometheus -x prometheus || true); do
        log "stopping prometheus pid $pid started by the package"
        "${sudo[@]}" kill "$pid" || true
    done
fi

[[ -x /usr/bin/prometheus && -x /usr/bin/promtool ]] || {
    log "error: /usr/bin/prometheus or /usr/bin/promtool missing after the install"
    exit 1
}
log "installed: $(/usr/bin/prometheus --version 2>&1 | head -n 1)"
