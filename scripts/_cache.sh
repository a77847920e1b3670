# shellcheck shell=bash
# The binary cache shared by scripts/build-collector.sh and scripts/build-vmagent.sh; sourced,
# not run. One entry per key at $OTEL_SPARSE_CACHE/<kind>/<key>/<name>; stdout carries only
# the binary's path (fd 3), everything else goes to stderr.
#
# Safe to run twice at once: a build holds a per-key flock, compiles into a temp dir beside
# the cache entry and renames the binary into place, so a reader never sees half a file.
#
#   cache_init build-foo            # fd 3 = stdout, stdout -> stderr; defines log and die
#   cache_open foo "$key" foo       # prints the cached path and exits if it is there
#   cache_lock                      # waits for the build lock; exits if a concurrent run built it
#   cache_workdir                   # $work: a temp dir beside the entry, removed on exit
#   ... build "$work/foo" ...
#   cache_install "$work/foo"       # rename into the entry, print the path

cache_init() {
    cache_tool="$1"
    exec 3>&1 1>&2 # everything goes to stderr; only the final path goes to fd 3 (stdout)
}

log() { printf '%s: %s\n' "$cache_tool" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Sets cache_root, entry and binary; a hit prints the path and ends the script.
cache_open() {
    local kind="$1" key="$2" name="$3"
    cache_root="${OTEL_SPARSE_CACHE:-$HOME/.cache/otel_sparse}"
    entry="$cache_root/$kind/$key"
    binary="$entry/$name"
    if [[ -x "$binary" ]]; then
        printf '%s\n' "$binary" >&3
        exit 0
    fi
    mkdir -p "$entry"
    cache_started=$SECONDS
}

# One build per key at a time; a second run waits here, then finds the binary.
cache_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$entry/.lock"
    log "waiting for the build lock $entry/.lock"
    flock 9
    if [[ -x "$binary" ]]; then
        log "built by a concurrent run"
        printf '%s\n' "$binary" >&3
        exit 0
    fi
    # Holding the lock, any temp dir left here is from a run that was killed.
    rm -rf "$entry"/.build.*
}

cache_workdir() {
    work="$(mktemp -d "$entry/.build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
}

# Moves the built binary into the entry (rename(2) within one directory tree: atomic, as
# the temp dir lives inside the entry) and prints its path.
cache_install() {
    mv -f "$1" "$binary"
    log "built $binary in $((SECONDS - cache_started)) s"
    printf '%s\n' "$binary" >&3
}
