#!/usr/bin/env bash
# scripts/rabbitmq-dev.sh start DIR | stop DIR
#
# A throwaway RabbitMQ broker for the notification tests, entirely inside DIR (Debian's
# rabbitmq-server package; scripts/install.sh --test installs it).
#   start DIR  one node named after DIR, AMQP on 127.0.0.1 on a free port, its database,
#              logs and Erlang cookie in DIR, no plugins; the default guest/guest user (which
#              RabbitMQ lets in from loopback only). Waits until the node is up, then prints:
#                export STREAMD_TEST_RABBITMQ_URL=rabbit://guest:guest@127.0.0.1:PORT/
#                export STREAMD_TEST_RABBITMQ_DIR=DIR
#              so that callers can: eval "$(scripts/rabbitmq-dev.sh start DIR)"
#   stop DIR   stops the node and removes DIR.
# Several brokers may run at once (each its own node name and ports); they share the host's
# epmd, which RabbitMQ starts when none runs. Progress goes to stderr.
set -euo pipefail

MARKER=.streamd-rabbitmq-dev
BIN=/usr/lib/rabbitmq/bin

say() { printf 'rabbitmq-dev: %s\n' "$*" >&2; }
die() { printf 'rabbitmq-dev: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | stop DIR"; }

[ "$#" -eq 2 ] || usage
cmd="$1"
[ -n "$2" ] || usage
DIR="$(realpath -m -- "$2")"
[ "$DIR" != / ] || die "refusing to use / as DIR"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node_env() {  # the environment every rabbitmq command of this node runs with
    local name
    name="$(cat "$DIR/nodename")"
    export HOME="$DIR"   # the Erlang cookie lives in $HOME
    export RABBITMQ_NODENAME="$name"
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_PID_FILE="$DIR/rabbitmq.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq"
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
}

start() {
    [ -x "$BIN/rabbitmq-server" ] || die "$BIN/rabbitmq-server not found (apt-get install rabbitmq-server)"
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        die "$DIR exists and is not empty"
    fi
    mkdir -p "$DIR/mnesia" "$DIR/log"
    touch "$DIR/$MARKER"
    local port dist_port
    port="$(free_port)"
    dist_port="$(free_port)"
    echo "streamd-$(basename "$DIR" | tr -c 'A-Za-z0-9_\n-' _)@localhost" > "$DIR/nodename"
    echo "$port" > "$DIR/port"
    echo "[]." > "$DIR/enabled_plugins"
    : > "$DIR/rabbitmq-env.conf"
    echo "[]." > "$DIR/advanced.config"
    cat > "$DIR/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = $dist_port
distribution.listener.port_range.max = $dist_port
loopback_users.guest = true
log.file.level = warning
log.console = false
disk_free_limit.absolute = 50MB
EOF
    node_env
    say "starting node $RABBITMQ_NODENAME on 127.0.0.1:$port"
    "$BIN/rabbitmq-server" -detached > "$DIR/log/start.out" 2>&1 \
        || { cat "$DIR/log/start.out" >&2; die "rabbitmq-server did not start"; }
    # The node registers with epmd a moment after -detached returns: until then await_startup
    # fails at once, so ask until it answers.
    local deadline=$((SECONDS + 120)) up=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$BIN/rabbitmqctl" -q await_startup > "$DIR/log/await.out" 2>&1; then
            up=1
            break
        fi
        sleep 1
    done
    if [ "$up" -ne 1 ]; then
        cat "$DIR/log/await.out" >&2
        tail -20 "$DIR"/log/*.log >&2 2>/dev/null || true
        die "the node did not come up within 120 s"
    fi
    say "up"
    echo "export STREAMD_TEST_RABBITMQ_URL=rabbit://guest:guest@127.0.0.1:$port/"
    echo "export STREAMD_TEST_RABBITMQ_DIR=$DIR"
}

stop() {
    [ -e "$DIR/$MARKER" ] || { say "$DIR is not a rabbitmq-dev directory: nothing to stop"; return 0; }
    if [ -e "$DIR/nodename" ]; then
        node_env
        timeout 60 "$BIN/rabbitmqctl" -q stop > /dev/null 2>&1 || true
        if [ -e "$DIR/rabbitmq.pid" ]; then
            kill -9 "$(cat "$DIR/rabbitmq.pid")" 2>/dev/null || true
        fi
    fi
    rm -rf -- "$DIR"
    say "stopped"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
