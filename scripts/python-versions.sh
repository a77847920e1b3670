#!/usr/bin/env bash
# Run the unit tests (everything that needs no collector, Prometheus or torch) on CPython
# versions other than .venv's 3.11: the oldest and the newest we support.
#
#   bash scripts/python-versions.sh [VERSION...]
#
# Default versions: 3.9 and 3.13 (the unit tests take ~3-4 minutes per interpreter on 2
# cores). 3.10 and 3.12 run when named (bash scripts/python-versions.sh 3.10 3.12); CI
# leaves them to the oldest-version rules (ruff py39, mypy 3.9) plus 3.9 and 3.13 runs.
# The interpreter for each version, first found:
#   1. pyenv: ${PYENV_ROOT:-$HOME/.pyenv}/versions/X.Y.*/bin/python (newest patch); its venv
#      is .venv-pyX.Y, made with uv (wheels from uv's cache), otel-sparse[test] editable.
#   2. a Debian root made with debootstrap from Debian's own packages (no 3.9 comes from
#      PyPI): 3.9 -> bullseye (CPython 3.9.2), 3.13 -> trixie (3.13.5), with the host's
#      resolv.conf and CA bundle copied in so pip works there. Needs root. Cached in
#      ${OTEL_SPARSE_CACHE:-$HOME/.cache/otel_sparse}/debian-<suite> with its venv
#      (/opt/venv inside), so a later run only reinstalls the package. The repository is
#      bind-mounted at /repo inside for the run, with /proc, /dev and /dev/shm.
# OTEL_SPARSE_PYTHON_SOURCE=debian skips pyenv (to exercise the Debian path where pyenv
# exists). Extra pytest arguments: OTEL_SPARSE_UNIT_ARGS (e.g. "-x").
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
CACHE="${OTEL_SPARSE_CACHE:-$HOME/.cache/otel_sparse}"
PYENV_VERSIONS="${PYENV_ROOT:-$HOME/.pyenv}/versions"
SOURCE="${OTEL_SPARSE_PYTHON_SOURCE:-any}"

# The unit tests: no tests/integration (collector, Prometheus), no tests/deploy (promtool),
# nothing marked torch or cuda (and modules that need torch skip themselves without it).
UNIT_ARGS=(-p no:cacheprovider -q -m "not integration and not torch and not cuda"
           --ignore=tests/integration --ignore=tests/deploy)
# shellcheck disable=SC2206  # word splitting wanted: extra pytest flags
UNIT_ARGS+=(${OTEL_SPARSE_UNIT_ARGS:-})

declare -A SUITE=([3.9]=bullseye [3.11]=bookworm [3.13]=trixie)

log() { printf '\n--- %s\n' "$*" >&2; }

pyenv_python() {  # newest pyenv patch release of $1, or nothing
    [[ "$SOURCE" == debian ]] && return 0
    local found
    found="$(ls -d "$PYENV_VERSIONS/$1".* 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$found" && -x "$found/bin/python" ]] && echo "$found/bin/python"
    return 0
}

debian_mirror() {  # the Debian mirror apt already uses here
    local uri
    uri="$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
           /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n 1 | awk '{print $2}')"
    echo "${uri:-http://deb.debian.org/debian}"
}

make_root() {  # $1 suite -> prints the root's path; cached
    local suite="$1" root="$CACHE/debian-$1"
    if [[ ! -x "$root/opt/venv/bin/python" ]]; then
        [[ "$(id -u)" == 0 ]] || { echo "debootstrap needs root (no pyenv $suite python)" >&2; return 1; }
        command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >&2
        rm -rf "$root.tmp" && mkdir -p "$CACHE"
        log "debootstrap $suite from $(debian_mirror) (cached in $root)"
        debootstrap --variant=minbase "$suite" "$root.tmp" "$(debian_mirror)" >&2
        cp -L /etc/resolv.conf "$root.tmp/etc/resolv.conf"
        in_chroot "$root.tmp" sh -c 'apt-get update -q &&
            apt-get install -y -q --no-install-recommends python3 python3-venv' >&2
        # bullseye's pip (20.3) cannot install a pyproject-only package in editable mode
        # (and pip says nothing but a warning when it cannot reach PyPI: check the version)
        in_chroot "$root.tmp" sh -c 'python3 -m venv /opt/venv && pip install -q --upgrade pip &&
            python -c "import pip, sys; sys.exit(int(pip.__version__.split(\".\")[0]) < 21)"' >&2
        mv "$root.tmp" "$root"
    fi
    echo "$root"
}

HOST_CA=/etc/ssl/certs/ca-certificates.crt
ROOT_CA=/etc/host-ca-certificates.crt
# The host's CA bundle under a name Debian's ca-certificates package never rewrites (it
# would drop a proxy's CA that the host trusts), refreshed on every call.

in_chroot() {  # $1 root, rest: command run inside, trusting the host's CAs
    local root="$1"; shift
    cp "$HOST_CA" "$root$ROOT_CA"
    chroot "$root" env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 \
        SSL_CERT_FILE="$ROOT_CA" PIP_CERT="$ROOT_CA" "$@"
}

in_root() {  # $1 root, rest: command run inside with the repo at /repo
    local root="$1"; shift
    mkdir -p "$root/repo" "$root/proc" "$root/dev"
    mount --bind "$REPO" "$root/repo"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    local rc=0
    in_chroot "$root" "$@" || rc=$?
    umount -l "$root/dev" "$root/proc" "$root/repo"
    return "$rc"
}

run_version() {  # $1 version
    local version="$1" python started=$SECONDS
    python="$(pyenv_python "$version")"
    if [[ -n "$python" ]]; then
        log "CPython $version from pyenv: $python"
        local venv=".venv-py$version"
        [[ -x "$venv/bin/python" ]] || uv venv --quiet --python "$python" "$venv"
        uv pip install --quiet --python "$venv/bin/python" -e ".[test]"
        "$venv/bin/python" -m pytest "${UNIT_ARGS[@]}"
    elif [[ -n "${SUITE[$version]:-}" ]]; then
        local root
        root="$(make_root "${SUITE[$version]}")"
        log "CPython $version from Debian ${SUITE[$version]}: $(chroot "$root" /opt/venv/bin/python -V)"
        in_root "$root" sh -c 'cd /repo && pip install -q -e ".[test]" && python -m pytest "$@"' \
            sh "${UNIT_ARGS[@]}"
    else
        echo "no CPython $version: not in pyenv, and no Debian suite known for it" >&2
        return 1
    fi
    log "CPython $version: unit tests passed in $((SECONDS - started)) s"
}

(($# > 0)) || set -- 3.9 3.13
for version in "$@"; do
    run_version "$version"
done
