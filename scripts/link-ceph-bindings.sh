#!/usr/bin/env bash
# scripts/link-ceph-bindings.sh VENV_PYTHON
#
# Makes `import rados, rbd` work in the project's virtualenv. Ceph's Python
# bindings are not on PyPI; Debian ships them compiled, in python3-rados and
# python3-rbd, for Debian's own Python (bookworm: 3.11). This symlinks just
# those two extension modules (rados.cpython-311-*.so, rbd.cpython-311-*.so)
# into the venv's site-packages; nothing else from /usr/lib/python3/dist-packages
# becomes visible. The links follow Debian's packages on upgrade.
#
# Refuses (exit 1) when VENV_PYTHON is not a virtualenv interpreter, when it is
# not Python 3.11 (the modules are built for that ABI), or when the packages
# are missing. Idempotent. Called by scripts/install.sh --test.
set -euo pipefail

REQUIRED=3.11   # the Python of Debian bookworm, whose python3-rados/-rbd we use

die() { printf 'link-ceph-bindings: error: %s\n' "$*" >&2; exit 1; }

if [ "$#" -ne 1 ] || [ -z "$1" ]; then die "usage: $0 VENV_PYTHON   (e.g. .venv/bin/python)"; fi
PY="$1"
case "$PY" in  # absolute, but symlinks kept: a venv's python is a symlink
    /*) ;;
    */*) PY="$PWD/$PY" ;;
    *) PY="$(command -v -- "$PY" 2>/dev/null)" || die "$1: no such interpreter" ;;
esac
[ -x "$PY" ] || die "$1: no such interpreter"

info="$("$PY" -c 'import sys, sysconfig
print("%d.%d" % sys.version_info[:2])
print(int(sys.prefix != getattr(sys, "base_prefix", sys.prefix)))
print(sysconfig.get_paths()["platlib"])
print(sysconfig.get_config_var("EXT_SUFFIX"))')" || die "cannot run $PY"
{ read -r version; read -r in_venv; read -r site; read -r ext_suffix; } <<<"$info"

if [ "$version" != "$REQUIRED" ]; then
    die "$PY is Python $version, but Debian's python3-rados/python3-rbd are built for
  Python $REQUIRED only; make the venv with a Python $REQUIRED (scripts/install.sh does)."
fi
[ "$in_venv" = 1 ] || die "$PY is not a virtualenv interpreter; refusing to modify it"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: Debian's packages are needed"

for mod in rados rbd; do
    pkg="python3-$mod"
    so="$(dpkg-query -L "$pkg" 2>/dev/null | grep -E "/$mod\.cpython-[^/]*\.so\$" | head -n 1 || true)"
    [ -n "$so" ] || die "$pkg is not installed (scripts/install.sh --test installs it)"
    [ -f "$so" ] || die "$so is missing; reinstall $pkg"
    [ "${so##*/}" = "$mod$ext_suffix" ] \
        || die "$so does not match $PY's extension suffix $ext_suffix (another Python ABI)"
    mkdir -p -- "$site"
    ln -sfn -- "$so" "$site/${so##*/}"
done

(cd / && "$PY" -c 'import rados, rbd
print("link-ceph-bindings: %s -> librados %s, librbd %d.%d.%d"
      % (rados.__file__, rados.Rados().version(), *rbd.RBD().version()))') \
    || die "the linked modules do not import in $PY (see the error above)"
