# Sourced by ./run-server and ./run-tests: make .venv with jdmail installed.
# On a fresh Debian machine, as root, installs the Debian packages it needs first.
set -eu
REPO=$(cd "$(dirname "$0")" && pwd)
VENV=${JDMAIL_VENV:-$REPO/.venv}
PY=${PYTHON:-python3}

need_debs() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing Debian packages:$missing" >&2
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "bootstrap: please install these Debian packages first (as root: apt-get install$missing)" >&2
        exit 1
    fi
}

make_venv() {
    if ! command -v "$PY" >/dev/null; then need_debs python3; fi
    if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then need_debs python3-venv; fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    stamp="$VENV/.jdmail-installed"
    if [ ! -f "$stamp" ] || [ -n "$(find "$REPO/setup.cfg" "$REPO/jdmail" "$REPO/twisted" -newer "$stamp" -print -quit)" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q "$REPO$1"
        touch "$stamp"
    fi
}
