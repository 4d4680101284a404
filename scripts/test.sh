#!/usr/bin/env bash
# scripts/test.sh [pytest args...]
#
# Runs the whole test suite (default args: tests/ -q -n 3 --dist loadfile, then Tempest's image tests and
# glance-tempest-plugin's RBAC tests through scripts/tempest.sh) against throwaway services:
# a PostgreSQL cluster from scripts/pg-dev.sh and a single-node Ceph cluster from
# scripts/ceph-dev.sh, each in a temporary directory, removed on exit (also on
# failure or Ctrl-C). Assumes scripts/install.sh --test has run.
# Exits with pytest's exit code; "no tests collected" (5) counts as a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "test.sh: error: $PY not found; run scripts/install.sh --test first" >&2; exit 1; }

PG_DIR=""
CEPH_DIR=""
KEYSTONE_DIR=""
RABBITMQ_DIR=""
BARBICAN_DIR=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    # --- Ceph: stop the throwaway Ceph cluster (scripts/ceph-dev.sh) ---------------
    if [ -n "$CEPH_DIR" ]; then
        "$ROOT/scripts/ceph-dev.sh" stop "$CEPH_DIR" || true
    fi
    if [ -n "$BARBICAN_DIR" ]; then
        "$ROOT/scripts/barbican-dev.sh" stop "$BARBICAN_DIR" || true
    fi
    if [ -n "$KEYSTONE_DIR" ]; then
        "$ROOT/scripts/keystone-dev.sh" stop "$KEYSTONE_DIR" || true
    fi
    if [ -n "$RABBITMQ_DIR" ]; then
        "$ROOT/scripts/rabbitmq-dev.sh" stop "$RABBITMQ_DIR" || true
    fi
    if [ -n "$PG_DIR" ]; then
        "$ROOT/scripts/pg-dev.sh" stop "$PG_DIR" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL: exports STREAMD_TEST_PG_URL, STREAMD_TEST_PG_DIR ------------------
PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/streamd-pg.XXXXXX")"
pg_env="$("$ROOT/scripts/pg-dev.sh" start "$PG_DIR")"
eval "$pg_env"

# --- Ceph: exports CEPH_CONF, CEPH_ADMIN_KEYRING, CEPH_ID, CEPH_POOL, CEPH_MON_HOST,
# STREAMD_TEST_CEPH_DIR, and with its RADOS Gateway (S3 and Swift store tests)
# STREAMD_TEST_S3_* and STREAMD_TEST_SWIFT_*. Its path must stay short (admin sockets): at most 60 chars.
ceph_tmp="${TMPDIR:-/tmp}"
[ "${#ceph_tmp}" -le 40 ] || ceph_tmp=/tmp
CEPH_DIR="$(mktemp -d "$ceph_tmp/streamd-ceph.XXXXXX")"
unset CEPH_KEYRING CEPH_ARGS   # a user's own Ceph settings would override the cluster's
ceph_env="$(STREAMD_CEPH_RGW=1 "$ROOT/scripts/ceph-dev.sh" start "$CEPH_DIR")"
eval "$ceph_env"

# --- Keystone: exports STREAMD_TEST_KEYSTONE_URL, _ADMIN_PASSWORD, _DIR --------------
KEYSTONE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/streamd-keystone.XXXXXX")"
keystone_env="$("$ROOT/scripts/keystone-dev.sh" start "$KEYSTONE_DIR")"
eval "$keystone_env"

# --- RabbitMQ (notifications): exports STREAMD_TEST_RABBITMQ_URL, _DIR --------------------
RABBITMQ_DIR="$(mktemp -d "${TMPDIR:-/tmp}/streamd-rabbitmq.XXXXXX")"
rabbitmq_env="$("$ROOT/scripts/rabbitmq-dev.sh" start "$RABBITMQ_DIR")"
eval "$rabbitmq_env"

# --- Barbican (signed images' certificates), beside that Keystone: exports
# STREAMD_TEST_BARBICAN_URL, STREAMD_TEST_BARBICAN_DIR ----------------------------------
BARBICAN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/streamd-barbican.XXXXXX")"
barbican_env="$("$ROOT/scripts/barbican-dev.sh" start "$BARBICAN_DIR")"
eval "$barbican_env"
# ------------------------------------------------------------------------------------

whole_suite=0
if [ "$#" -eq 0 ]; then
    whole_suite=1
    # pytest-xdist: STREAMD_TEST_WORKERS processes (default 3: the tests wait on subprocess CLIs, servers
    # and Ceph more than they compute, so 3 keep 2 cores busy), a whole test file per worker (--dist loadfile:
    # a module's shared servers start once). STREAMD_TEST_WORKERS=0 runs the suite in this one process.
    set -- tests/ -q --durations=30 -n "${STREAMD_TEST_WORKERS:-3}" --dist loadfile
fi
echo "test.sh: $PY -m pytest $*" >&2
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: error: pytest collected no tests (exit code 5)" >&2
fi
# --- Tempest: the whole suite includes OpenStack's own image and RBAC tests (scripts/tempest.sh), against
# a streamd of their own and the Keystone started above. ------------------------------------------
if [ "$whole_suite" -eq 1 ]; then
    echo "test.sh: scripts/tempest.sh" >&2
    set +e
    "$ROOT/scripts/tempest.sh"
    tempest_rc=$?
    set -e
    [ "$tempest_rc" -eq 0 ] || { echo "test.sh: error: Tempest failed (exit $tempest_rc)" >&2; [ "$rc" -ne 0 ] || rc=1; }
fi
exit "$rc"
