#!/usr/bin/env bash
# scripts/install.sh [--test]
#
# Sets up streamd in a virtualenv at <repo>/.venv (idempotent; safe to re-run).
#   (no option)  Python 3.11 venv + `pip install -e .` (builds the Cython
#                extension streamd.kernels._zeroscan_c from _native/zeroscan.pyx).
#   --test       also the Debian packages the test suite needs (PostgreSQL server,
#                qemu-utils, ...) and `pip install -e '.[test]'`.
# Build prerequisites (a C compiler, Python headers, venv support) are installed
# with apt-get only when missing. apt-get runs as root, via sudo when not root.
# Environment: PYTHON=/path/to/python3.11 picks the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# Debian packages the test suite needs (installed by --test).
TEST_APT_PACKAGES=(postgresql qemu-utils genisoimage rabbitmq-server)
# --- Ceph: packages for the throwaway Ceph cluster (RBD store tests). ---------
# scripts/ceph-dev.sh runs ceph-mon + ceph-osd (+ radosgw for the S3/Swift store tests,
# with STREAMD_CEPH_RGW=1); ceph-common has the ceph/rbd/rados CLIs; python3-rados/python3-rbd are Debian's bindings (built for Debian's Python
# 3.11), linked into the venv by scripts/link-ceph-bindings.sh (step 5).
CEPH_APT_PACKAGES=(ceph-mon ceph-osd ceph-common radosgw python3-rados python3-rbd)
# ------------------------------------------------------------------------------

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

with_test=0
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg (usage: scripts/install.sh [--test])" ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

is_installed() {  # dpkg package name
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

apt_install() {  # packages...: installs those not yet installed; no-op if all are
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 \
        || die "missing system packages: ${missing[*]} (no apt-get here: install them yourself)"
    if [ "${#SUDO[@]}" -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
        die "missing system packages: ${missing[*]}; not root and no sudo: install them as root"
    fi
    say "apt-get install ${missing[*]}"
    # The packages' own services (a system PostgreSQL, RabbitMQ, Ceph) are never started: the
    # tests start throwaway ones of their own. Where no policy-rc.d says so already, one that
    # denies every start is in place while apt runs (the usual container set-up).
    local policy=/usr/sbin/policy-rc.d placed=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        placed=1
    fi
    local rc=0
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
    if [ "$rc" -eq 0 ]; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    fi
    [ "$placed" -eq 0 ] || "${SUDO[@]}" rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
}

is_py311() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {  # prints the real path of a Python 3.11 interpreter
    local c p cands=(python3.11 python3 /usr/bin/python3.11 /usr/bin/python3)
    [ -z "${PYTHON:-}" ] || cands=("$PYTHON")   # an explicit choice is not second-guessed
    for c in "${cands[@]}"; do
        p="$(command -v "$c" 2>/dev/null)" || continue
        if is_py311 "$p"; then
            "$p" -c 'import sys; print(sys.executable)'   # resolves pyenv shims
            return 0
        fi
    done
    return 1
}

# --- 1. Python 3.11 -------------------------------------------------------------
if ! PY="$(find_python)"; then
    # Debian 12's own python3 is 3.11: install it when there is no python3 at all.
    if [ -z "${PYTHON:-}" ] && [ ! -e /usr/bin/python3 ] && command -v apt-get >/dev/null 2>&1; then
        apt_install python3 python3-venv python3-dev
    fi
    PY="$(find_python)" || die "Python 3.11 is required (streamd supports >=3.11,<3.12) but none was found
  (tried ${PYTHON:-python3.11, python3, /usr/bin/python3.11, /usr/bin/python3}).
  Install Python 3.11 (e.g. Debian 12: apt-get install python3 python3-venv python3-dev)
  or point PYTHON=/path/to/python3.11 at one."
fi
say "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

# --- 2. system packages -----------------------------------------------------------
pkgs=()
# venv support (Debian splits ensurepip out into python3.11-venv)
if ! [ -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
    case "$PY" in
        /usr/bin/*) pkgs+=(python3-venv) ;;
        *) die "$PY cannot create virtualenvs (no ensurepip); use another Python 3.11 via PYTHON=" ;;
    esac
fi
# Python headers, for building the Cython extension
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
    case "$PY" in
        /usr/bin/*) pkgs+=(python3-dev) ;;
        *) die "Python.h not found for $PY; install that Python's development headers" ;;
    esac
fi
# C compiler (the one Python was configured with; Debian's is x86_64-linux-gnu-gcc)
cc="$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "gcc").split()[0])')"
if ! command -v "$cc" >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1 \
        || ! [ -e /usr/include/stdio.h ]; then
    pkgs+=(build-essential)
fi
if [ "$with_test" -eq 1 ]; then
    pkgs+=("${TEST_APT_PACKAGES[@]}" ${CEPH_APT_PACKAGES[@]+"${CEPH_APT_PACKAGES[@]}"})
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
    apt_install "${pkgs[@]}"
fi

# --- 3. virtualenv ----------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && is_py311 "$VENV/bin/python" \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "venv: reusing $VENV"
else
    if [ -e "$VENV" ]; then
        say "venv: $VENV is broken or not Python 3.11; recreating it"
        rm -rf "$VENV"
    fi
    say "venv: creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say "pip install --upgrade pip"
"$VPY" -m pip install -q --upgrade pip

if [ "$with_test" -eq 1 ]; then target='.[test]'; else target='.'; fi
say "pip install -e '$target' (builds the Cython extension)"
(cd "$ROOT" && "$VPY" -m pip install -q -e "$target")

# --- 4. the compiled zero-scan kernel ----------------------------------------------
check_ext() {  # imports it from outside the source tree, as an installed user would
    (cd / && env -u STREAMD_NO_EXTENSIONS "$VPY" -c \
        'import streamd.kernels._qcow2_c, streamd.kernels._zeroscan_c as m; print(m.__file__)')
}
if [ -f "$ROOT/_native/zeroscan.pyx" ]; then
    if ! so="$(check_ext 2>/dev/null)"; then
        say "editable install did not provide streamd.kernels._zeroscan_c; running setup.py build_ext --inplace"
        "$VPY" -m pip install -q --upgrade setuptools wheel 'Cython>=3.0'
        (cd "$ROOT" && "$VPY" setup.py -q build_ext --inplace)
        so="$(check_ext)" || die "streamd.kernels._zeroscan_c still cannot be imported (see the error above)"
    fi
    say "extension: $so"
else
    say "note: _native/zeroscan.pyx not found; skipping the extension check"
fi

# --- 5. Ceph: Debian's rados/rbd modules, linked into the venv (--test only) -------
if [ "$with_test" -eq 1 ] && [ "${#CEPH_APT_PACKAGES[@]}" -gt 0 ]; then
    say "linking Debian's rados/rbd Python bindings into $VENV"
    "$ROOT/scripts/link-ceph-bindings.sh" "$VPY"
fi

# --- 6. real Glance 33 for the parity tests and the bench (--test only) ------------------
# tests/test_glance_parity.py runs the real glance CLI against streamd and against Glance 33
# (glance, python-glanceclient and uWSGI from PyPI, in their own venv: bench/servers.py).
if [ "$with_test" -eq 1 ]; then
    say "Glance 33 reference venv in $ROOT/.venv-glance"
    (cd "$ROOT" && "$VPY" -c 'import sys; sys.path.insert(0, "bench"); from pathlib import Path; from servers import Glance; Glance.ensure_venv(Path(".venv-glance"))')
fi

# --- 7. Keystone 30 for the identity tests and Tempest (--test only) ---------------------
# scripts/keystone-dev.sh starts a throwaway Keystone from its own venv; make it now so that
# the suite does not pay for it.
if [ "$with_test" -eq 1 ]; then
    say "Keystone 30 venv in $ROOT/.venv-keystone"
    "$ROOT/scripts/keystone-dev.sh" venv
    say "Barbican 23 venv in $ROOT/.venv-barbican"
    "$ROOT/scripts/barbican-dev.sh" venv
    say "Tempest 47 + glance-tempest-plugin venv in $ROOT/.venv-tempest"
    "$ROOT/scripts/tempest.sh" venv
fi

say "done: $("$VPY" -c 'import sys; print(sys.prefix)')"
if [ "$with_test" -eq 1 ]; then
    say "run the tests with: scripts/test.sh"
else
    say "run the daemon with: .venv/bin/streamd serve"
fi
