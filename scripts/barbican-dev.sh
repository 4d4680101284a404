#!/usr/bin/env bash
# scripts/barbican-dev.sh start DIR | stop DIR | venv
#
# A throwaway Barbican (key manager, API v1) for the signed-image tests, entirely inside DIR,
# beside a Keystone that already runs (scripts/keystone-dev.sh; its URL and admin password
# from STREAMD_TEST_KEYSTONE_URL and STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD).
#   start DIR  barbican.conf in DIR/.barbican (oslo.config finds it there with HOME=DIR): SQLite
#              in DIR, the simple_crypto plugin with a KEK made now, keystonemiddleware's
#              auth_token against that Keystone (as its admin user); barbican-manage db upgrade;
#              serves Barbican's paste pipeline (/v1 behind auth_token) on 127.0.0.1 on a free
#              port with the standard library's threaded WSGI server (no uWSGI build needed);
#              waits until / answers, then prints to stdout:
#                export STREAMD_TEST_BARBICAN_URL=http://127.0.0.1:PORT
#                export STREAMD_TEST_BARBICAN_DIR=DIR
#              so that callers can: eval "$(scripts/barbican-dev.sh start DIR)"
#   stop DIR   stops the server and removes DIR.
# Barbican comes from PyPI into $ROOT/.venv-barbican (made here if missing; scripts/install.sh
# --test makes it too). Progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMD_BARBICAN_VENV:-$ROOT/.venv-barbican}"
BARBICAN_PACKAGES=(barbican==23.0.0)
MARKER=.streamd-barbican-dev

say() { printf 'barbican-dev: %s\n' "$*" >&2; }
die() { printf 'barbican-dev: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | stop DIR | venv"; }

ensure_venv() {
    [ -x "$VENV/bin/barbican-manage" ] && return 0
    say "creating $VENV (${BARBICAN_PACKAGES[*]})"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q "${BARBICAN_PACKAGES[@]}" >&2
}

free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    : "${STREAMD_TEST_KEYSTONE_URL:?needs a running Keystone (scripts/keystone-dev.sh start)}"
    : "${STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD:?needs the Keystone admin password}"
    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR exists and is not a directory"
        [ ! -e "$DIR/$MARKER" ] || die "$DIR already holds a barbican-dev server; run: $0 stop $DIR"
        [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty; give a new or empty directory"
    fi
    ensure_venv
    mkdir -p "$DIR/.barbican"
    touch "$DIR/$MARKER"
    chmod 700 "$DIR"
    local port kek auth_base
    port="$(free_port)"
    kek="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
    auth_base="${STREAMD_TEST_KEYSTONE_URL%/v3}"
    cat >"$DIR/.barbican/barbican.conf" <<CONF
[DEFAULT]
log_file = $DIR/barbican.log
debug = false
sql_connection = sqlite:///$DIR/barbican.sqlite
host_href = http://127.0.0.1:$port
db_auto_create = false

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = $kek

[keystone_authtoken]
www_authenticate_uri = $STREAMD_TEST_KEYSTONE_URL
auth_url = $auth_base
auth_type = password
username = admin
password = $STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD
user_domain_name = Default
project_name = admin
project_domain_name = Default
service_token_roles_required = false

[oslo_policy]
enforce_scope = true
enforce_new_defaults = true

[queue]
enable = false
CONF
    # Barbican's own paste pipeline, but read from DIR (its loader insists on /etc/barbican).
    sed -e "s#/etc/barbican/#$DIR/#g" "$VENV/etc/barbican/barbican-api-paste.ini" >"$DIR/barbican-api-paste.ini"
    cat >"$DIR/serve.py" <<'PY'
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from paste import deploy


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))


app = deploy.loadapp("config:" + sys.argv[1])
make_server("127.0.0.1", int(sys.argv[2]), app, server_class=Server, handler_class=Quiet).serve_forever()
PY
    say "db upgrade in $DIR"
    (cd "$DIR" && HOME="$DIR" "$VENV/bin/barbican-manage" db upgrade >>"$DIR/setup.log" 2>&1) \
        || { tail -n 30 "$DIR/setup.log" >&2; die "barbican-manage db upgrade failed"; }
    say "starting Barbican on 127.0.0.1:$port"
    (cd "$DIR" && HOME="$DIR" exec setsid "$VENV/bin/python" "$DIR/serve.py" "$DIR/barbican-api-paste.ini" "$port" \
        >>"$DIR/server.log" 2>&1 </dev/null & echo $! >"$DIR/server.pid")
    echo "$port" >"$DIR/port"
    local i
    for i in $(seq 300); do
        if python3 - "$port" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
except urllib.error.HTTPError as exc:  # the versions document answers 300 Multiple Choices
    assert exc.code == 300
PY
        if ! kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; then
            tail -n 30 "$DIR/server.log" >&2; die "Barbican exited"
        fi
        [ "$i" -lt 300 ] || { tail -n 30 "$DIR/server.log" >&2; die "Barbican did not answer on 127.0.0.1:$port"; }
        sleep 0.2
    done
    say "ready: http://127.0.0.1:$port (Keystone $STREAMD_TEST_KEYSTONE_URL)"
    printf 'export STREAMD_TEST_BARBICAN_URL=%q\n' "http://127.0.0.1:$port"
    printf 'export STREAMD_TEST_BARBICAN_DIR=%q\n' "$DIR"
}

stop() {
    if [ ! -e "$DIR" ]; then
        say "$DIR does not exist; nothing to stop"
        return 0
    fi
    [ -e "$DIR/$MARKER" ] || die "$DIR was not made by $0 start; not touching it"
    if [ -f "$DIR/server.pid" ]; then
        local pid
        pid="$(cat "$DIR/server.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Barbican answers any fault of its own with a bare 500: what it logged goes with the run's
    # output before the log is removed with DIR.
    local log
    for log in "$DIR/barbican.log" "$DIR/server.log"; do
        if [ -f "$log" ] && grep -q -E 'ERROR|Traceback' "$log"; then
            say "errors in $(basename "$log") (its last 60 lines):"
            tail -n 60 "$log" | sed 's/^/barbican-dev:   /' >&2
        fi
    done
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
