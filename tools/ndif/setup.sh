#!/usr/bin/env bash
# Set up NDIF's server stack for `make ndif-check`, once, in its own venv (docs/ndif.md).
#
#   .cache/ndif/venv    Python 3.12 venv: ndif[api,ray]==0.1.2, moto[server], torch, ... pinned
#                       by tools/ndif/requirements.lock (pip freeze of a working set-up)
#   .cache/ndif/redis   Debian's redis-server 7.0.15 and its two libraries, unpacked from their
#                       .deb files (apt-get download + dpkg -x: no root, no system service)
#
# Never touches the project's .venv. Re-running it is a no-op once .cache/ndif/ready exists.
# Offline after the first run: pip and apt are needed only then.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR=$ROOT/.cache/ndif
PY312=${NDIF_PYTHON:-$(command -v python3.12 || echo "$HOME/.pyenv/versions/3.12.1/bin/python")}

install_actor() {   # the CPU model actor (docs/ndif.md): for Ray's workers, in this venv only
    local site
    site=$("$DIR/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp tools/ndif/ndif_cpu_actor.py "$site/ndif_cpu_actor.py"
    # The one patch to a dependency (docs/ndif.md): Ray 2.60 gives a starting raylet a fixed
    # 30 s to register with no setting to change it; a loaded 2-core machine misses that.
    sed -i 's/^\( *\)raylet_start_wait_time_s = 30$/\1raylet_start_wait_time_s = 300/' \
        "$site/ray/_private/node.py"
}

if [ -f "$DIR/ready" ]; then
    install_actor   # cheap, and keeps it in step with tools/ndif
    echo "ndif-check: stack already set up in $DIR (rm -r $DIR to redo)"
    exit 0
fi
mkdir -p "$DIR"
started=$(date +%s)

if [ ! -x "$PY312" ]; then
    echo "ndif-check: NDIF 0.1.2 needs Python >= 3.12; none at $PY312 (set NDIF_PYTHON)" >&2
    exit 1
fi

if [ ! -x "$DIR/venv/bin/python" ]; then
    "$PY312" -m venv "$DIR/venv"
fi
echo "ndif-check: installing NDIF's stack into $DIR/venv (torch and Ray: several GB, minutes)"
"$DIR/venv/bin/pip" install -q --disable-pip-version-check -r tools/ndif/requirements.lock \
    2> >(grep -v "WARNING: Location" >&2)

if [ ! -x "$DIR/redis/usr/bin/redis-server" ]; then
    echo "ndif-check: unpacking Debian's redis-server into $DIR/redis"
    debs=$(mktemp -d)
    (cd "$debs" && apt-get download -q redis-server redis-tools liblzf1 libjemalloc2 2>/dev/null \
        || apt-get download redis-server redis-tools liblzf1 libjemalloc2)
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$DIR/redis"; done
    rm -r "$debs"
fi
install_actor
LD_LIBRARY_PATH=$DIR/redis/usr/lib/x86_64-linux-gnu "$DIR/redis/usr/bin/redis-server" --version >/dev/null

touch "$DIR/ready"
echo "ndif-check: set up in $(( $(date +%s) - started )) s"
