#!/usr/bin/env bash
# scripts/ceph-dev.sh start DIR | stop DIR
#
# A throwaway single-node Ceph cluster for tests, entirely inside DIR: one
# monitor (mon.a, msgr2 only, 127.0.0.1 on a free port), one bluestore OSD
# (osd.0) in a sparse file DIR/osd.0/block, no mgr, and an RBD pool ("images")
# with replica size 1. Pool deletion is allowed. Not for data you care about.
#   start DIR  DIR must be new or empty, its path at most 60 characters (the
#              daemons' admin sockets live in DIR/run). Waits until the OSD is
#              up and the pool is initialised for RBD, then prints to stdout:
#                export CEPH_CONF=DIR/ceph.conf          (ceph, rbd, rados read it)
#                export CEPH_ADMIN_KEYRING=DIR/ceph.client.admin.keyring
#                export CEPH_ID=admin
#                export CEPH_POOL=images
#                export CEPH_MON_HOST=v2:127.0.0.1:PORT
#                export STREAMD_TEST_CEPH_DIR=DIR
#              so that callers can: eval "$(scripts/ceph-dev.sh start DIR)"
#              (the same lines are in DIR/env.sh). On failure the daemons are
#              stopped and DIR is kept, with the logs in DIR/log.
#   stop DIR   stops the cluster's radosgw, ceph-osd and ceph-mon (found by their
#              pid files in DIR/run, and only if they run with DIR/ceph.conf), then
#              removes DIR, which must carry the marker file that start made.
# With STREAMD_CEPH_RGW=1, start also runs one RADOS Gateway (client.rgw.a, beast
# frontend on 127.0.0.1 at a free port, data in DIR/rgw.a; it creates its own
# pools), waits until it answers HTTP, creates the S3 user "streamd" and its
# Swift subuser "streamd:swift", and prints besides:
#                export STREAMD_TEST_S3_ENDPOINT=http://127.0.0.1:RGWPORT
#                export STREAMD_TEST_S3_ACCESS_KEY=... STREAMD_TEST_S3_SECRET_KEY=...
#                export STREAMD_TEST_SWIFT_AUTH_URL=http://127.0.0.1:RGWPORT/auth/1.0
#                export STREAMD_TEST_SWIFT_USER=streamd:swift STREAMD_TEST_SWIFT_KEY=...
#              (Swift's v1 auth: X-Auth-User/X-Auth-Key to the auth URL). Needs
#              Debian's radosgw package. The gateway needs no mgr.
# Settings: STREAMD_CEPH_BLOCK_SIZE (default 20G: the OSD's sparse block file,
# only written blocks use disk), STREAMD_CEPH_POOL (default images),
# STREAMD_CEPH_TIMEOUT (default 60 s), STREAMD_CEPH_RGW (0 or 1, default 0). Progress goes to stderr.
#
# Without a mgr, `ceph df`/`rados df`/`ceph pg stat` show nothing and health
# turns HEALTH_WARN (no active mgr) after 2 minutes; RBD and RADOS I/O work.
#
# The keyring is deliberately not exported as CEPH_KEYRING: every Ceph daemon
# and tool lets that variable override ceph.conf, so an OSD started from such a
# shell would authenticate with the admin key. This script unsets it.
set -euo pipefail
unset CEPH_KEYRING CEPH_ARGS CEPH_CONF

MARKER=.streamd-ceph-dev
POOL="${STREAMD_CEPH_POOL:-images}"
BLOCK_SIZE="${STREAMD_CEPH_BLOCK_SIZE:-20G}"
TIMEOUT="${STREAMD_CEPH_TIMEOUT:-60}"
RGW="${STREAMD_CEPH_RGW:-0}"
PG_NUM=8

T0="$(date +%s%N)"
say() { printf 'ceph-dev: [%5.1fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*" >&2; }
die() { printf 'ceph-dev: error: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | stop DIR"; }

[ "$#" -eq 2 ] || usage
cmd="$1"
[ -n "$2" ] || usage
DIR="$(realpath -m -- "$2")"
[ "$DIR" != / ] || die "refusing to use / as DIR"
CONF="$DIR/ceph.conf"
ADMIN_KEYRING="$DIR/ceph.client.admin.keyring"

# --- stopping ------------------------------------------------------------------------

is_ours() {  # PID: a live ceph-mon/ceph-osd/radosgw that runs with this cluster's ceph.conf
    local exe
    exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
    exe="${exe% (deleted)}"
    case "${exe##*/}" in ceph-mon|ceph-osd|radosgw) ;; *) return 1 ;; esac
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$CONF"
}

stop_kind() {  # client.rgw|osd|mon: SIGTERM to those of DIR/run/KIND.*.pid, SIGKILL after 10 s
    local f pid pids=() alive i
    for f in "$DIR/run/$1".*.pid; do
        [ -f "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        case "$pid" in ''|*[!0-9]*) continue ;; esac
        if is_ours "$pid" && kill -TERM "$pid" 2>/dev/null; then
            kill -CONT "$pid" 2>/dev/null || true   # a test may have SIGSTOPped it
            pids+=("$pid")
        fi
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    for i in $(seq 100); do
        alive=()
        for pid in "${pids[@]}"; do is_ours "$pid" && alive+=("$pid"); done
        [ "${#alive[@]}" -gt 0 ] || return 0
        [ "$i" -lt 100 ] || break
        sleep 0.1
    done
    for pid in "${alive[@]}"; do
        say "pid $pid ignored SIGTERM for 10 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

stop_daemons() {
    # The gateway first: it is a client of both.
    stop_kind client.rgw
    # then the OSD: a stopping OSD reports to the monitor and waits (up to 5 s) for it.
    stop_kind osd
    stop_kind mon
}

stop() {
    if [ ! -e "$DIR" ]; then
        say "$DIR does not exist; nothing to stop"
        return 0
    fi
    [ -e "$DIR/$MARKER" ] || die "$DIR was not made by $0 start (no $MARKER); not touching it"
    stop_daemons
    rm -rf -- "$DIR"
    say "stopped; removed $DIR"
}

# --- starting ------------------------------------------------------------------------

authtool() { ceph-authtool "$@" >/dev/null; }
ceph_cli() { timeout 30 ceph -c "$CONF" --connect-timeout 20 "$@"; }

pick_port() {  # a port that binds on 127.0.0.1, in 20000-29999: outside the kernel's
    # ephemeral range and the 6800-7300 range where the OSD binds its own ports
    /usr/bin/python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(20000, 29999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port")'
}

write_conf() {  # PORT (replaces ceph.conf in one step: a running mkfs may read it)
    cat >"$CONF.new" <<CONF
# scripts/ceph-dev.sh: throwaway test cluster; everything stays in $DIR
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$1]
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth allow insecure global id reclaim = false
run dir = $DIR/run
crash dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
mon cluster log file = $DIR/log/cluster.log
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
# pools that tests create: 8 PGs each (default 32; one OSD takes at most 250)
osd pool default pg num = $PG_NUM
osd pool default pgp num = $PG_NUM
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $DIR/mon.\$id
# a taken port: fail at once (default: 3 tries 5 s apart); start picks another
ms bind retry count = 1
# propose map changes every 0.1 s instead of every 1 s: the OSD's boot and the
# pool's creation each wait for one proposal
paxos propose interval = 0.1
paxos min wait = 0.01

[osd]
# A crashed client's watch on an RBD header blocks removing that image until it times
# out; streamd retries, and a short timeout keeps the crash-recovery tests quick.
osd client watch timeout = 10
osd data = $DIR/osd.\$id
keyring = $DIR/osd.\$id/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $BLOCK_BYTES
bluestore fsck on mkfs = false
# bitmap reuses freed space, so the sparse block file grows only as far as the
# live data (the default allocator keeps moving on to never-written space)
bluestore allocator = bitmap
# the block device's completion thread checks for shutdown every this many ms
# (default 250), and mkfs and start close the device several times: -2 s
bdev aio poll ms = 20
osd memory target = 1073741824

[client]
keyring = $ADMIN_KEYRING
admin socket =
log file = $DIR/log/client.log
CONF
    mv -f -- "$CONF.new" "$CONF"
}

kill_clients() {  # ceph/rbd commands of this start still running (they name $CONF)
    local d a args
    for d in /proc/[0-9]*; do
        [ "${d#/proc/}" != "$$" ] || continue
        mapfile -d '' -t args <"$d/cmdline" 2>/dev/null || continue
        for a in "${args[@]}"; do
            if [ "$a" = "$CONF" ]; then
                case "$(readlink "$d/exe" 2>/dev/null)" in
                    */ceph-mon|*/ceph-osd|*/radosgw) ;;   # stop_daemons' business
                    *) kill -TERM "${d#/proc/}" 2>/dev/null || true ;;
                esac
                break
            fi
        done
    done
}

start_failed() {
    local rc=$? f j
    [ "$started" -eq 0 ] || return 0
    for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
    kill_clients
    wait 2>/dev/null || true
    for f in "$DIR"/log/*.log; do
        [ -s "$f" ] || continue
        printf -- '--- last lines of %s:\n' "$f" >&2
        tail -n 10 -- "$f" >&2
    done
    stop_daemons
    say "start failed; daemons stopped, logs kept; remove with: $0 stop $DIR"
    exit "$(( rc == 0 ? 1 : rc ))"
}

start() {
    local tool
    for tool in ceph ceph-authtool ceph-mon ceph-osd monmaptool rbd numfmt /usr/bin/python3; do
        command -v "$tool" >/dev/null 2>&1 \
            || die "$tool not found (run scripts/install.sh --test: it installs ceph-mon ceph-osd ceph-common)"
    done
    case "$TIMEOUT" in ''|*[!0-9]*|0) die "STREAMD_CEPH_TIMEOUT must be a whole number of seconds" ;; esac
    case "$RGW" in 0|1) ;; *) die "STREAMD_CEPH_RGW must be 0 or 1" ;; esac
    if [ "$RGW" = 1 ]; then
        for tool in radosgw radosgw-admin curl; do
            command -v "$tool" >/dev/null 2>&1 \
                || die "$tool not found (run scripts/install.sh --test: it installs radosgw)"
        done
    fi
    [ -n "$POOL" ] || die "STREAMD_CEPH_POOL must not be empty"
    BLOCK_BYTES="$(numfmt --from=iec -- "$BLOCK_SIZE" 2>/dev/null)" \
        || die "STREAMD_CEPH_BLOCK_SIZE=$BLOCK_SIZE is not a size like 20G"
    if [ -e "$DIR" ]; then
        [ -d "$DIR" ] || die "$DIR exists and is not a directory"
        [ ! -e "$DIR/$MARKER" ] || die "$DIR already holds a ceph-dev cluster; run: $0 stop $DIR"
        [ -z "$(ls -A -- "$DIR")" ] || die "$DIR is not empty; give a new or empty directory"
    fi
    # unix socket paths have at most 107 bytes; the longest is DIR/run/osd.0.asok
    [ "${#DIR}" -le 60 ] || die "DIR path longer than 60 characters (admin sockets): $DIR"
    # it goes into ceph.conf unquoted, where '#', ';', '$' and spaces mean something
    case "$DIR" in *[!A-Za-z0-9._/+-]*) die "DIR may hold only letters, digits and ._+-/: $DIR" ;; esac

    mkdir -p -- "$DIR"
    touch "$DIR/$MARKER"
    chmod 700 "$DIR"
    mkdir "$DIR/run" "$DIR/log" "$DIR/osd.0"
    started=0
    trap start_failed EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    FSID="$(cat /proc/sys/kernel/random/uuid)"
    local osd_uuid port attempt
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"

    # Keys: the OSD's key goes into the monitor's initial auth database with the
    # admin's, so no key has to be registered at run time.
    authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
    authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    authtool --create-keyring "$DIR/osd.0/keyring" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
    authtool "$DIR/mon.keyring" --import-keyring "$ADMIN_KEYRING"
    authtool "$DIR/mon.keyring" --import-keyring "$DIR/osd.0/keyring"

    # The OSD's mkfs needs no monitor (--no-mon-config): run it meanwhile.
    port="$(pick_port)"
    write_conf "$port"
    ( exec ceph-osd -c "$CONF" -i 0 --mkfs --no-mon-config --osd-uuid "$osd_uuid" \
        >"$DIR/log/osd.0.mkfs.log" 2>&1 ) &
    local mkfs_job=$!

    # The monitor: its address is fixed at mkfs, so a port lost to a race means
    # a new monitor store.
    for attempt in 1 2 3; do
        if [ "$attempt" -gt 1 ]; then
            port="$(pick_port)"
            write_conf "$port"
        fi
        rm -rf -- "$DIR/mon.a" "$DIR/monmap"
        monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
        ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
            >"$DIR/log/mon.a.mkfs.log" 2>&1 || die "ceph-mon --mkfs failed (see $DIR/log/mon.a.mkfs.log)"
        if ceph-mon -c "$CONF" -i a >"$DIR/log/mon.a.start.log" 2>&1; then
            break
        fi
        if [ "$attempt" -eq 3 ] || ! grep -q 'unable to bind' "$DIR/log/mon.a.log" 2>/dev/null; then
            die "ceph-mon did not start (see $DIR/log/mon.a.start.log and mon.a.log)"
        fi
        say "port $port was taken; retrying"
    done
    say "mon.a on v2:127.0.0.1:$port (pid $(cat "$DIR/run/mon.a.pid" 2>/dev/null))"

    # Register osd.0. The monitor refuses clients until it has committed its
    # first map; this also waits for that. `osd new` with the same uuid is idempotent.
    local id="" deadline=$((SECONDS + TIMEOUT))
    until id="$(ceph_cli osd new "$osd_uuid" 0 2>>"$DIR/log/start-cli.log")"; do
        [ "$SECONDS" -lt "$deadline" ] || die "the monitor does not answer (see $DIR/log/)"
        sleep 0.2
    done
    [ "$id" = 0 ] || die "ceph osd new gave osd id '$id', expected 0"

    # The pool, while the OSD starts (exec: the job's pid is timeout's, which
    # passes a SIGTERM on to ceph).
    ( exec timeout 30 ceph -c "$CONF" --connect-timeout 20 osd pool create "$POOL" "$PG_NUM" "$PG_NUM" \
        >/dev/null 2>>"$DIR/log/start-cli.log" ) &
    local pool_job=$!
    wait "$mkfs_job" || die "ceph-osd --mkfs failed (see $DIR/log/osd.0.mkfs.log and osd.0.log)"
    ceph-osd -c "$CONF" -i 0 >"$DIR/log/osd.0.start.log" 2>&1 \
        || die "ceph-osd did not start (see $DIR/log/osd.0.start.log and osd.0.log)"
    say "osd.0 started (pid $(cat "$DIR/run/osd.0.pid" 2>/dev/null)); initialising pool $POOL"
    wait "$pool_job" || die "ceph osd pool create $POOL failed (see $DIR/log/start-cli.log)"
    # `rbd pool init` writes an object: it returns once the OSD is up and the
    # pool's PG is active. A client op that waits for an OSD is retried on the
    # objecter tick (default 5 s): shorten it here.
    timeout "$TIMEOUT" rbd -c "$CONF" --objecter-tick-interval 0.2 pool init "$POOL" \
        2>>"$DIR/log/start-cli.log" \
        || die "rbd pool init $POOL failed or timed out after ${TIMEOUT}s (see $DIR/log/)"

    cat >"$DIR/env.sh" <<ENV
export CEPH_CONF=$(printf '%q' "$CONF")
export CEPH_ADMIN_KEYRING=$(printf '%q' "$ADMIN_KEYRING")
export CEPH_ID=admin
export CEPH_POOL=$(printf '%q' "$POOL")
export CEPH_MON_HOST=v2:127.0.0.1:$port
export STREAMD_TEST_CEPH_DIR=$(printf '%q' "$DIR")
ENV
    [ "$RGW" = 0 ] || start_rgw
    started=1
    say "ready: pool $POOL on v2:127.0.0.1:$port$([ "$RGW" = 0 ] || echo ", radosgw"), cluster in $DIR"
    cat "$DIR/env.sh"
}

start_rgw() {  # appends the gateway's section to ceph.conf and its exports to DIR/env.sh
    local rgw_port access secret swift_key i deadline
    mkdir "$DIR/rgw.a"
    # Its key, registered at run time (the monitor is up): what a gateway needs to create its
    # pools (mon rw) and keep its objects and their classes (osd rwx).
    ceph_cli auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' \
        -o "$DIR/rgw.a/keyring" 2>>"$DIR/log/start-cli.log" \
        || die "ceph auth get-or-create client.rgw.a failed (see $DIR/log/start-cli.log)"
    for i in 1 2 3; do
        rgw_port="$(pick_port)"
        # A section of its own: it overrides [client]'s keyring, log file and (empty) admin socket.
        { cat -- "$CONF"; cat <<CONF

[client.rgw.a]
keyring = $DIR/rgw.a/keyring
rgw data = $DIR/rgw.a
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
log file = $DIR/log/client.rgw.a.log
admin socket = $DIR/run/client.rgw.a.asok
# the pools it creates: replica 1 as the cluster's, 8 PGs each (one OSD takes 250)
rgw rados pool pg num min = $PG_NUM
# no usage log, and deleted objects' data garbage-collected soon (default after 2 h)
rgw enable usage log = false
rgw gc obj min wait = 60
rgw gc processor period = 60
CONF
        } >"$CONF.new"
        mv -f -- "$CONF.new" "$CONF"
        radosgw -c "$CONF" -n client.rgw.a >"$DIR/log/rgw.a.start.log" 2>&1 \
            || die "radosgw did not start (see $DIR/log/rgw.a.start.log and client.rgw.a.log)"
        # Up once it answers HTTP (an anonymous ListBuckets); it creates its pools before that.
        deadline=$((SECONDS + TIMEOUT))
        until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$rgw_port/"; do
            if [ ! -s "$DIR/run/client.rgw.a.pid" ] || ! is_ours "$(cat "$DIR/run/client.rgw.a.pid")"; then
                break
            fi
            [ "$SECONDS" -lt "$deadline" ] || die "radosgw does not answer on 127.0.0.1:$rgw_port after ${TIMEOUT}s (see $DIR/log/client.rgw.a.log)"
            sleep 0.2
        done
        if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$rgw_port/"; then
            break
        fi
        # It exited: a port taken in the meantime is worth another try, anything else is not.
        grep -q -i 'address already in use\|failed to bind' "$DIR/log/client.rgw.a.log" 2>/dev/null && [ "$i" -lt 3 ] \
            || die "radosgw exited (see $DIR/log/client.rgw.a.log)"
        say "port $rgw_port was taken; retrying"
        # drop the section just appended
        sed -i '/^\[client\.rgw\.a\]$/,$d' "$CONF"
    done
    say "radosgw on http://127.0.0.1:$rgw_port (pid $(cat "$DIR/run/client.rgw.a.pid" 2>/dev/null))"
    access="$(/usr/bin/python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20)))')"
    secret="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(30))')"
    swift_key="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(30))')"
    timeout 60 radosgw-admin -c "$CONF" user create --uid=streamd --display-name="streamd tests" \
        --access-key="$access" --secret-key="$secret" >/dev/null 2>>"$DIR/log/start-cli.log" \
        || die "radosgw-admin user create failed (see $DIR/log/start-cli.log)"
    timeout 60 radosgw-admin -c "$CONF" subuser create --uid=streamd --subuser=streamd:swift --access=full \
        --key-type=swift --secret-key="$swift_key" >/dev/null 2>>"$DIR/log/start-cli.log" \
        || die "radosgw-admin subuser create failed (see $DIR/log/start-cli.log)"
    cat >>"$DIR/env.sh" <<ENV
export STREAMD_TEST_S3_ENDPOINT=http://127.0.0.1:$rgw_port
export STREAMD_TEST_S3_ACCESS_KEY=$access
export STREAMD_TEST_S3_SECRET_KEY=$secret
export STREAMD_TEST_SWIFT_AUTH_URL=http://127.0.0.1:$rgw_port/auth/1.0
export STREAMD_TEST_SWIFT_USER=streamd:swift
export STREAMD_TEST_SWIFT_KEY=$swift_key
ENV
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
