#!/usr/bin/env bash
# scripts/pg-dev.sh start DIR | stop DIR
#
# A throwaway PostgreSQL cluster for tests, entirely inside DIR.
#   start DIR  initdb (trust auth, local + 127.0.0.1), listen on 127.0.0.1 on a
#              free port, unix socket in DIR, fsync=off, database "streamd";
#              waits until it accepts connections, then prints to stdout:
#                export STREAMD_TEST_PG_URL=postgresql+asyncpg://USER@127.0.0.1:PORT/streamd
#                export STREAMD_TEST_PG_DIR=DIR
#              so that callers can: eval "$(scripts/pg-dev.sh start DIR)"
#   stop DIR   stops the server (immediate) and removes DIR.
# Uses the newest Debian PostgreSQL in /usr/lib/postgresql/*/bin. PostgreSQL
# refuses to run as root: as root, DIR is owned by the "postgres" system user,
# the server runs as that user, and USER is "postgres"; otherwise USER is the
# current user. Progress goes to stderr.
set -euo pipefail

MARKER=.streamd-pg-dev
DBNAME=streamd

say() { printf 'pg-dev: %s\n' "$*" >&2; }
die() { printf 'pg-dev: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | stop DIR"; }

[ "$#" -eq 2 ] || usage
cmd="$1"
[ -n "$2" ] || usage
DIR="$(realpath -m -- "$2")"
[ "$DIR" != / ] || die "refusing to use / as DIR"

if [ "$(id -u)" -eq 0 ]; then
    as_root=1
    PGUSER_NAME=postgres
else
    as_root=0
    PGUSER_NAME="$(id -un)"
fi

pg_bin() {  # newest /usr/lib/postgresql/<version>/bin
    local d
    d="$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
    if ! [ -x "$d" ]; then
        die "no PostgreSQL server found in /usr/lib/postgresql/*/bin (run scripts/install.sh --test)"
    fi
    dirname "$d"
}

as_pg() {  # runs a server binary as the cluster's owner
    if [ "$as_root" -eq 1 ]; then
        (cd "$DIR" && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

free_port() {
    local py p
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' && return 0
        fi
    done
    for _ in $(seq 50); do  # no Python: try random ports until one is not answering
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    die "could not find a free TCP port"
}

start() {
    BIN="$(pg_bin)"
    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR exists and is not a directory"
        if [ -e "$DIR/$MARKER" ]; then
            die "$DIR already holds a pg-dev cluster; run: $0 stop $DIR"
        fi
        [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty; give a new or empty directory"
    fi
    [ "$((${#DIR} + 20))" -le 107 ] || die "DIR path too long for a unix socket path: $DIR"

    mkdir -p "$DIR"
    touch "$DIR/$MARKER"
    chmod 700 "$DIR"
    if [ "$as_root" -eq 1 ]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user (install postgresql)"
        chown postgres:postgres "$DIR"
        runuser -u postgres -- test -w "$DIR" -a -x "$DIR" 2>/dev/null \
            || die "user postgres cannot write $DIR (is a parent directory private?); use a directory under /tmp"
    fi

    say "initdb ($BIN) in $DIR/data, superuser $PGUSER_NAME"
    if ! as_pg "$BIN/initdb" -D "$DIR/data" -U "$PGUSER_NAME" -A trust -E UTF8 --no-locale \
            --no-sync >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed"
    fi
    local sockdir="${DIR//\'/\'\'}"
    cat >>"$DIR/data/postgresql.conf" <<CONF

# --- scripts/pg-dev.sh: throwaway test cluster ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 200
CONF

    local port attempt
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        say "starting postgres on 127.0.0.1:$port"
        if as_pg "$BIN/pg_ctl" start -w -t 30 -s -D "$DIR/data" -l "$DIR/postgres.log" \
                -o "-p $port" >&2; then
            break
        fi
        if [ "$attempt" -lt 5 ] && grep -q 'already in use' "$DIR/postgres.log" 2>/dev/null; then
            say "port $port was taken; retrying"
            continue
        fi
        tail -n 30 "$DIR/postgres.log" >&2 || true
        die "postgres did not start (log: $DIR/postgres.log; clean up with: $0 stop $DIR)"
    done
    echo "$port" >"$DIR/port"

    local i
    for i in $(seq 100); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && break
        [ "$i" -lt 100 ] || die "postgres on 127.0.0.1:$port is not accepting connections (log: $DIR/postgres.log)"
        sleep 0.1
    done
    "$BIN/createdb" -h 127.0.0.1 -p "$port" -U "$PGUSER_NAME" "$DBNAME" \
        || die "createdb $DBNAME failed"
    say "ready: database $DBNAME on 127.0.0.1:$port (user $PGUSER_NAME)"

    printf 'export STREAMD_TEST_PG_URL=%q\n' "postgresql+asyncpg://$PGUSER_NAME@127.0.0.1:$port/$DBNAME"
    printf 'export STREAMD_TEST_PG_DIR=%q\n' "$DIR"
}

stop() {
    if [ ! -e "$DIR" ]; then
        say "$DIR does not exist; nothing to stop"
        return 0
    fi
    [ -e "$DIR/$MARKER" ] || die "$DIR was not made by $0 start; not touching it"
    if [ -f "$DIR/data/postmaster.pid" ]; then
        BIN="$(pg_bin)"
        say "stopping postgres in $DIR"
        as_pg "$BIN/pg_ctl" stop -s -m immediate -w -t 10 -D "$DIR/data" >&2 \
            || say "warning: pg_ctl stop failed (already stopped?)"
    fi
    rm -rf -- "$DIR"
    say "removed $DIR"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
