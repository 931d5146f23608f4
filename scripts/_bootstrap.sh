# shellcheck shell=bash
# Shared setup for scripts/test and scripts/serve. Sourced, not run: it only defines
# functions and REPO_ROOT / VENV. Every step is idempotent and cheap when already done.
#
# Environment knobs:
#   PYTHON=/path/to/python3.x           interpreter for a new .venv (default: python3, >= 3.11)
#   CALLCENTER_SKIP_SYSTEM_PACKAGES=1   never call apt-get (just report what is missing)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO_ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $(id -u) == 0 ]]; }
is_ci() { [[ ${CI:-} =~ ^(true|TRUE|True|1|yes)$ ]]; }

# --- system packages (Debian/Ubuntu) -----------------------------------------------------

_apt_updated=
can_apt() { is_root && have apt-get && [[ -z ${CALLCENTER_SKIP_SYSTEM_PACKAGES:-} ]]; }

# apt_install PKG...: quiet, non-interactive; shows apt's output only when it fails.
apt_install() {
    local log opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 -q)
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $_apt_updated ]]; then
        say "apt-get update"
        # retried: on a freshly booted machine apt-daily may hold the lists lock for a while
        _retry 6 apt-get "${opts[@]}" update >"$log" 2>&1 \
            || { tail -n 40 "$log" >&2; rm -f "$log"; die "apt-get update failed"; }
        _apt_updated=1
    fi
    say "apt-get install $*"
    _retry 3 apt-get "${opts[@]}" install -y --no-install-recommends "$@" >"$log" 2>&1 \
        || { tail -n 60 "$log" >&2; rm -f "$log"; die "apt-get install $* failed"; }
    rm -f "$log"
}

# _retry N CMD...: run CMD up to N times, 10 s apart.
_retry() {
    local n=$1 i; shift
    for ((i = 1; i <= n; i++)); do
        "$@" && return 0
        ((i < n)) && sleep 10
    done
    return 1
}

# require_packages WHY PKG...: install as root, otherwise explain (fatal in CI).
require_packages() {
    local why=$1; shift
    if can_apt; then
        apt_install "$@"
        return 0
    fi
    local msg="missing $why; install with: sudo apt-get install $*"
    is_ci && die "$msg"
    warn "$msg"
    return 1
}

# --- python / .venv ----------------------------------------------------------------------

_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local c
    for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if have "$c" && _py_ok "$c"; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    [[ -x $VENV/bin/python ]] && _py_ok "$VENV/bin/python" \
        && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1
}

# Debian packages still needed to create .venv (none once it exists).
python_packages_needed() {
    venv_ok && return 0
    local py
    if ! py=$(find_python); then
        echo "python3 python3-venv"
    elif [[ $(readlink -f "$py") == /usr/bin/python3* ]] && have dpkg-query \
        && [[ $(dpkg-query -W -f='${Status}' python3-venv 2>/dev/null) != *"ok installed"* ]]; then
        echo "python3-venv"  # Debian's python3 has no ensurepip without it
    fi
}

ensure_venv() {
    venv_ok && return 0
    local py need
    need=$(python_packages_needed)
    if [[ -n $need ]]; then
        # shellcheck disable=SC2086
        require_packages "Python >= 3.11 with venv" $need || true
    fi
    py=$(find_python) || die "no Python >= 3.11 found (set PYTHON=/path/to/python3.11+)"
    if [[ -e $VENV ]]; then
        warn "$VENV is unusable (no python >= 3.11 with pip): recreating it"
        rm -rf "$VENV"
    fi
    say "creating .venv with $py ($("$py" -V 2>&1))"
    if ! "$py" -m venv "$VENV"; then
        # Debian/Ubuntu ship venv without ensurepip unless python3-venv is installed
        rm -rf "$VENV"
        require_packages "the Python venv module" python3-venv || die "cannot create $VENV"
        "$py" -m venv "$VENV" || { rm -rf "$VENV"; die "cannot create $VENV"; }
    fi
    say "upgrading pip in .venv"
    "$VENV/bin/python" -m pip install -q --upgrade pip || die "pip upgrade failed"
}

# ensure_installed [EXTRAS]: editable install of the project (pip only when pyproject.toml,
# the interpreter or the requested extras changed; an install with extras covers one without).
ensure_installed() {
    local extras=${1:-} stamp_file="$VENV/.callcenter-install" want have_hash have_extras spec="."
    want=$({ cat "$REPO_ROOT/pyproject.toml"; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp_file ]]; then
        read -r have_hash have_extras <"$stamp_file" || true
        if [[ $have_hash == "$want" && ( -z $extras || ${have_extras:-} == "$extras" ) ]] \
            && "$VENV/bin/python" -c 'import callcenter' >/dev/null 2>&1; then
            return 0
        fi
    fi
    [[ -n $extras ]] && spec=".[$extras]"
    say "pip install -e '$spec'"
    local log
    log=$(mktemp)
    # the build backend is chatty even with -q: show its output only when pip fails
    if ! (cd "$REPO_ROOT" && "$VENV/bin/python" -m pip install -q -e "$spec") >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "pip install -e '$spec' failed"
    fi
    rm -f "$log"
    printf '%s %s\n' "$want" "$extras" >"$stamp_file"
}

# --- test-only dependencies --------------------------------------------------------------

have_pg_server() {
    [[ -n ${CALLCENTER_TEST_POSTGRES_URL:-} ]] && return 0
    local py
    if py=$(find_python); then  # same lookup as the fixtures (stdlib only, no venv needed)
        "$py" "$REPO_ROOT/callcenter/db/pgcluster.py" --bindir >/dev/null 2>&1
    else
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
    fi
}

ensure_test_system_packages() {
    local pkgs=()
    # shellcheck disable=SC2207
    pkgs+=($(python_packages_needed))  # batched here: one apt-get run on a fresh machine
    have_pg_server || pkgs+=(postgresql)
    have node || pkgs+=(nodejs npm ca-certificates)
    # staff console browser tests: Debian's Chromium + chromedriver, and CJK fonts for screenshots
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || pkgs+=(chromium chromium-driver)
    compgen -G '/usr/share/fonts/opentype/noto/NotoSansCJK*' >/dev/null || pkgs+=(fonts-noto-cjk)
    { have espeak-ng && have sox; } || pkgs+=(espeak-ng sox)  # IVR prompt synthesis
    have baresip || pkgs+=(baresip-core)  # a real SIP softphone (RFC 4733 keys) for the voice tests
    ((${#pkgs[@]})) || return 0
    require_packages "system packages for the tests" "${pkgs[@]}" \
        || warn "tests that need them will be skipped (in CI they fail)"
}

# The real Asterisk 22 of the voice tests (tests/support/asterisk.py): the shared peer's
# installer unpacks its build into the cache and apt-installs the libraries it links against
# (as root). Skipped when ASTERISK_PREFIX names an install; without the shared folder the
# voice tests skip outside CI and fail in it, saying why.
shared_dir() {
    local d
    if [[ -n ${CALLCENTER_SHARED_DIR:-} ]]; then echo "$CALLCENTER_SHARED_DIR"; return 0; fi
    for d in "$REPO_ROOT/.." "$REPO_ROOT/../.."; do
        [[ -d $d/shared ]] && { (cd "$d/shared" && pwd); return 0; }
    done
    return 1
}

ensure_asterisk() {
    [[ -n ${ASTERISK_PREFIX:-} ]] && return 0
    local shared installer log
    if ! shared=$(shared_dir) || [[ ! -f $shared/peers/asterisk/install.sh ]]; then
        is_ci && die "no Asterisk for the voice tests: set ASTERISK_PREFIX or provide ../shared/peers/asterisk"
        warn "no ../shared/peers/asterisk and no ASTERISK_PREFIX: the real-Asterisk tests will skip"
        return 0
    fi
    installer=$shared/peers/asterisk/install.sh
    log=$(mktemp)
    if ! bash "$installer" "${XDG_CACHE_HOME:-$HOME/.cache}/asterisk-peer" >"$log" 2>&1; then
        tail -n 20 "$log" >&2; rm -f "$log"
        is_ci && die "installing Asterisk with $installer failed"
        warn "installing Asterisk failed: the real-Asterisk tests will skip"
        return 0
    fi
    rm -f "$log"
}

# npm dependencies of the SMSC simulator (tests/smsc), when it exists.
ensure_smsc_deps() {
    local dir="$REPO_ROOT/tests/smsc" log
    [[ -f $dir/package.json ]] || return 0
    if ! have npm; then
        warn "npm not found: not installing tests/smsc dependencies"
        return 0
    fi
    if [[ -d $dir/node_modules ]]; then
        # up to date unless the lockfile changed since the last install
        [[ -f $dir/package-lock.json && $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]] \
            || return 0
    fi
    log=$(mktemp)
    if [[ -f $dir/package-lock.json ]]; then
        say "npm ci --prefix tests/smsc"
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >"$log" 2>&1
    else
        say "npm install --prefix tests/smsc (no package-lock.json)"
        npm install --prefix "$dir" --no-audit --no-fund --no-package-lock --loglevel=error >"$log" 2>&1
    fi || { cat "$log" >&2; rm -f "$log"; die "npm install in tests/smsc failed"; }
    rm -f "$log"
}
