#!/usr/bin/env bash
# scripts/keystone-dev.sh start DIR | stop DIR
#
# A throwaway Keystone (identity v3) for tests, Tempest and trying streamd with real tokens,
# entirely inside DIR.
#   start DIR  keystone.conf with SQLite in DIR, fernet tokens and credentials keys in DIR,
#              password_hash_rounds = 4 (Tempest authenticates hundreds of times; bcrypt's
#              default cost is slow on 2 cores), Keystone's own cache on in memory (one uWSGI
#              process, so it stays coherent: reads 0.3-0.5 s -> 0.01 s under load, Tempest's
#              run 1493 s -> 237 s); db_sync, fernet_setup, credential_setup,
#              bootstrap (admin / admin project / RegionOne, identity endpoint); serves the
#              public API under uWSGI on 127.0.0.1 on a free port; waits until /v3 answers,
#              then prints to stdout:
#                export STREAMD_TEST_KEYSTONE_URL=http://127.0.0.1:PORT/v3
#                export STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD=...
#                export STREAMD_TEST_KEYSTONE_DIR=DIR
#              so that callers can: eval "$(scripts/keystone-dev.sh start DIR)"
#   stop DIR   stops uWSGI and removes DIR.
# STREAMD_KEYSTONE_TOKEN_EXPIRATION sets [token] expiration, the lifetime of tokens in seconds
# (default 3600); the tests start a second Keystone with a few seconds to see tokens expire.
# Keystone 30 and uWSGI come from PyPI into $ROOT/.venv-keystone (made here if missing;
# scripts/install.sh --test makes it too). Progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMD_KEYSTONE_VENV:-$ROOT/.venv-keystone}"
KEYSTONE_PACKAGES=(keystone==30.0.0 uwsgi)
MARKER=.streamd-keystone-dev
ADMIN_PASSWORD=streamd-admin-secret

say() { printf 'keystone-dev: %s\n' "$*" >&2; }
die() { printf 'keystone-dev: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | stop DIR | venv"; }

ensure_venv() {
    [ -x "$VENV/bin/uwsgi" ] && [ -x "$VENV/bin/keystone-manage" ] && return 0
    say "creating $VENV (${KEYSTONE_PACKAGES[*]})"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q "${KEYSTONE_PACKAGES[@]}" >&2
}

free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR exists and is not a directory"
        [ ! -e "$DIR/$MARKER" ] || die "$DIR already holds a keystone-dev server; run: $0 stop $DIR"
        [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty; give a new or empty directory"
    fi
    ensure_venv
    mkdir -p "$DIR"/{fernet-keys,credential-keys}
    # The database on tmpfs when there is one: Keystone commits (and SQLite fsyncs) on every
    # authentication, and Tempest authenticates hundreds of times.
    DBDIR="$DIR"
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        DBDIR="$(mktemp -d /dev/shm/streamd-keystone.XXXXXX)"
        ln -s "$DBDIR" "$DIR/db"
    fi
    touch "$DIR/$MARKER"
    chmod 700 "$DIR" "$DIR/fernet-keys" "$DIR/credential-keys"
    local port
    port="$(free_port)"
    TOKEN_EXPIRATION="${STREAMD_KEYSTONE_TOKEN_EXPIRATION:-3600}"
    [[ "$TOKEN_EXPIRATION" =~ ^[0-9]+$ ]] || die "STREAMD_KEYSTONE_TOKEN_EXPIRATION must be a number of seconds"
    cat >"$DIR/keystone.conf" <<CONF
[DEFAULT]
log_file = $DIR/keystone.log
debug = false

[database]
connection = sqlite:///$DBDIR/keystone.db

[token]
provider = fernet
expiration = $TOKEN_EXPIRATION

[fernet_tokens]
key_repository = $DIR/fernet-keys

[fernet_receipts]
key_repository = $DIR/fernet-keys

[credential]
key_repository = $DIR/credential-keys

[identity]
password_hash_rounds = 4

[cache]
enabled = true
backend = dogpile.cache.memory
CONF
    export OS_KEYSTONE_CONFIG_FILES="$DIR/keystone.conf"
    local manage=("$VENV/bin/keystone-manage" --config-file "$DIR/keystone.conf")
    say "db_sync, fernet_setup, credential_setup in $DIR"
    "${manage[@]}" db_sync >>"$DIR/setup.log" 2>&1 || { tail -n 30 "$DIR/setup.log" >&2; die "db_sync failed"; }
    "${manage[@]}" fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" >>"$DIR/setup.log" 2>&1 \
        || die "fernet_setup failed (log: $DIR/setup.log)"
    "${manage[@]}" credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" >>"$DIR/setup.log" 2>&1 \
        || die "credential_setup failed (log: $DIR/setup.log)"
    "${manage[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" --bootstrap-username admin \
        --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-service-name keystone \
        --bootstrap-region-id RegionOne --bootstrap-public-url "http://127.0.0.1:$port/v3" \
        --bootstrap-internal-url "http://127.0.0.1:$port/v3" >>"$DIR/setup.log" 2>&1 \
        || { tail -n 30 "$DIR/setup.log" >&2; die "bootstrap failed"; }

    # Connection: close and a long socket timeout: without them clients that authenticate
    # often (Tempest) see RemoteDisconnected from uWSGI's keep-alive handling.
    cat >"$DIR/uwsgi.ini" <<INI
[uwsgi]
http-socket = 127.0.0.1:$port
module = keystone.wsgi.api:application
virtualenv = $VENV
master = true
processes = 1
threads = 1
lazy-apps = true
socket-timeout = 120
add-header = Connection: close
die-on-term = true
pidfile = $DIR/uwsgi.pid
logto = $DIR/uwsgi.log
env = OS_KEYSTONE_CONFIG_FILES=$DIR/keystone.conf
INI
    say "starting uWSGI on 127.0.0.1:$port"
    "$VENV/bin/uwsgi" --ini "$DIR/uwsgi.ini" --daemonize2 "$DIR/uwsgi.log" >&2 || die "uwsgi failed to start"
    echo "$port" >"$DIR/port"
    local i
    for i in $(seq 300); do
        if python3 - "$port" <<'PY' 2>/dev/null; then break; fi
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v3", timeout=2) as r:
    json.load(r)["version"]
PY
        [ "$i" -lt 300 ] || { tail -n 30 "$DIR/uwsgi.log" >&2; die "Keystone did not answer on 127.0.0.1:$port"; }
        sleep 0.2
    done
    say "ready: http://127.0.0.1:$port/v3 (admin / admin project)"
    printf 'export STREAMD_TEST_KEYSTONE_URL=%q\n' "http://127.0.0.1:$port/v3"
    printf 'export STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD=%q\n' "$ADMIN_PASSWORD"
    printf 'export STREAMD_TEST_KEYSTONE_DIR=%q\n' "$DIR"
}

stop() {
    if [ ! -e "$DIR" ]; then
        say "$DIR does not exist; nothing to stop"
        return 0
    fi
    [ -e "$DIR/$MARKER" ] || die "$DIR was not made by $0 start; not touching it"
    if [ -f "$DIR/uwsgi.pid" ]; then
        local pid
        pid="$(cat "$DIR/uwsgi.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ -L "$DIR/db" ]; then
        rm -rf -- "$(readlink "$DIR/db")"
    fi
    rm -rf -- "$DIR"
    say "removed $DIR"
}

case "${1:-}" in
    venv) [ "$#" -eq 1 ] || usage; ensure_venv ;;
    start|stop)
        [ "$#" -eq 2 ] && [ -n "$2" ] || usage
        DIR="$(realpath -m -- "$2")"
        [ "$DIR" != / ] || die "refusing to use / as DIR"
        "$1"
        ;;
    *) usage ;;
esac
