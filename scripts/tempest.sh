#!/usr/bin/env bash
# scripts/tempest.sh [TEST_REGEX]
#
# Runs OpenStack's Tempest image tests and glance-tempest-plugin's RBAC tests (default regex:
# ^(tempest\.api\.image\.v2|glance_tempest_plugin\.tests\.rbac)) against two
# streamd nodes started for the run (one catalogue; the second is Tempest's alternate endpoint), with a throwaway Keystone (scripts/keystone-dev.sh) for identity:
# Keystone tokens, secure RBAC (enforce_scope, new defaults), two file stores ("cheap" the
# default, "fast"), glance-direct + web-download + copy-image + glance-download, the image cache on, and a
# loopback HTTP server for the image URLs Tempest would otherwise fetch from the internet.
# Prints Tempest's own pass/fail/skip counts; exits non-zero when a test fails or none ran.
#
# Tempest 47 and glance-tempest-plugin 0.17.0 live in their own venv ($ROOT/.venv-tempest, made
# here if missing, the plugin added to an older one; install.sh --test makes it too). Set
# STREAMD_TEMPEST_KEEP=1 to keep the work directory (logs, tempest.conf, streamd.conf) for a look
# afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
TEMPEST_VENV="${STREAMD_TEMPEST_VENV:-$ROOT/.venv-tempest}"
TEMPEST_PACKAGES=(tempest==47.0.0 glance-tempest-plugin==0.17.0)

say() { printf 'tempest.sh: %s\n' "$*" >&2; }
die() { printf 'tempest.sh: error: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY not found; run scripts/install.sh --test first"

if [ "${1:-}" = venv ]; then
    set -- __venv_only__
fi
if ! [ -x "$TEMPEST_VENV/bin/tempest" ]; then
    say "creating $TEMPEST_VENV (${TEMPEST_PACKAGES[*]})"
    python3 -m venv --clear "$TEMPEST_VENV"
    "$TEMPEST_VENV/bin/pip" install -q --upgrade pip >&2
    "$TEMPEST_VENV/bin/pip" install -q "${TEMPEST_PACKAGES[@]}" >&2
elif ! "$TEMPEST_VENV/bin/pip" show -q glance-tempest-plugin >/dev/null 2>&1; then
    # A venv made before the plugin joined the list: add it (and keep Tempest's pin).
    say "installing ${TEMPEST_PACKAGES[*]} into $TEMPEST_VENV"
    "$TEMPEST_VENV/bin/pip" install -q "${TEMPEST_PACKAGES[@]}" >&2
fi
[ "${1:-}" != __venv_only__ ] || exit 0

exec "$PY" "$ROOT/scripts/tempest_run.py" --tempest-venv "$TEMPEST_VENV" "$@"
