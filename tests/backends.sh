#!/usr/bin/env bash
# Install (if missing) and start (if not running) the real servers and tools
# that Fieldline's tests talk to, all on 127.0.0.1. Idempotent: a server that
# already answers on its port is reused as it is.
#
#   bash tests/backends.sh                 # everything
#   bash tests/backends.sh mariadb venv    # only some parts
#   bash tests/backends.sh stop [PART...]  # stop the servers this script started
#
# Parts: tools (mbpoll, socat, curl, openssl), mosquitto, mariadb, influxdb, victoria-metrics, venv,
# node (node-opcua, from tests/peers/package.json, into $FIELDLINE_BACKENDS_DIR/node).
#
# State (data dirs, configs, logs, pid files, the Python venv) lives in
#   FIELDLINE_BACKENDS_DIR   default /var/tmp/fieldline-backends
# Ports (overridable, e.g. to start a second, throwaway instance):
#   FIELDLINE_MQTT_PORT      default 1883
#   FIELDLINE_MARIADB_PORT   default 3306
#   FIELDLINE_INFLUX_PORT    default 8086 (and FIELDLINE_INFLUX_RPC_PORT, default 8088)
#   FIELDLINE_VM_PORT        default 8428 (VictoriaMetrics, the InfluxDB v2 write API peer)
#   FIELDLINE_WAIT_SECS      default 30, how long to wait for a server to answer
#   FIELDLINE_PYTHON         default python3, the interpreter the venv is made from
#
# Exports nothing: tests use the fixed defaults MQTT 127.0.0.1:1883,
# mysql://root@127.0.0.1:3306/test, http://127.0.0.1:8086, http://127.0.0.1:8428 and
# $FIELDLINE_BACKENDS_DIR/venv/bin/python and $FIELDLINE_BACKENDS_DIR/node/node_modules.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${FIELDLINE_BACKENDS_DIR:-/var/tmp/fieldline-backends}
MQTT_PORT=${FIELDLINE_MQTT_PORT:-1883}
MARIADB_PORT=${FIELDLINE_MARIADB_PORT:-3306}
INFLUX_PORT=${FIELDLINE_INFLUX_PORT:-8086}
INFLUX_RPC_PORT=${FIELDLINE_INFLUX_RPC_PORT:-8088}
VM_PORT=${FIELDLINE_VM_PORT:-8428}
WAIT_SECS=${FIELDLINE_WAIT_SECS:-30}
PYTHON=${FIELDLINE_PYTHON:-python3}
REQUIREMENTS="$HERE/peers/requirements.txt"
VENV="$DIR/venv"

ALL_PARTS=(tools mosquitto mariadb influxdb victoria-metrics venv node)
SUMMARY=()

log() { printf 'backends: %s\n' "$*" >&2; }

die() {
    printf 'backends: ERROR: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr (for failure messages).
tail_log() {
    local f=$1
    if [[ -s $f ]]; then
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2 || true
        printf -- '----- end of %s -----\n' "$f" >&2
    else
        printf 'backends: (log %s is empty or missing)\n' "$f" >&2
    fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_until DESCRIPTION LOGFILE COMMAND...: retry COMMAND for WAIT_SECS seconds.
wait_until() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail_log "$logfile"
            die "$what did not come up within ${WAIT_SECS}s (log: $logfile)"
        fi
        sleep 0.3
    done
}

# ---------------------------------------------------------------- apt

APT_UPDATED=0
# apt_install PKG...: install the packages (apt-get update at most once a run).
apt_install() {
    (($# > 0)) || return 0
    command -v apt-get >/dev/null || die "need to install $*, but apt-get is not available"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >"$DIR/apt.log" 2>&1 ||
            { tail_log "$DIR/apt.log"; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    local t0=$SECONDS
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$DIR/apt.log" 2>&1 ||
        { tail_log "$DIR/apt.log"; die "apt-get install $* failed"; }
    log "installed $* in $((SECONDS - t0))s"
}

have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- stop

# stop_pidfile NAME PIDFILE BINARY: stop a server this script started (by its
# pid, and only if that pid still runs BINARY).
stop_pidfile() {
    local name=$1 pidfile=$2 binary=$3 pid
    if [[ ! -s $pidfile ]]; then
        log "$name: no pid file $pidfile, nothing to stop"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: pid ${pid:-?} is not running"
        rm -f "$pidfile"
        return 0
    fi
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$binary"; then
        log "$name: pid $pid is not $binary (stale pid file), not stopping it"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid"
    local deadline=$((SECONDS + WAIT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            die "$name (pid $pid) did not stop within ${WAIT_SECS}s"
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

stop_parts() {
    local part
    for part in "$@"; do
        case $part in
        mosquitto) stop_pidfile mosquitto "$DIR/mosquitto.pid" mosquitto ;;
        mariadb) stop_pidfile mariadb "$DIR/mariadbd.pid" mariadbd ;;
        influxdb) stop_pidfile influxdb "$DIR/influxd.pid" influxd ;;
        victoria-metrics) stop_pidfile victoria-metrics "$DIR/victoria-metrics.pid" victoria-metrics ;;
        tools | venv | node) ;;
        *) die "unknown part '$part' (parts: ${ALL_PARTS[*]})" ;;
        esac
    done
}

# ---------------------------------------------------------------- tools

setup_tools() {
    local missing=()
    have mbpoll || missing+=(mbpoll)
    have socat || missing+=(socat)
    have curl || missing+=(curl)
    have openssl || missing+=(openssl)
    apt_install "${missing[@]}"
    SUMMARY+=("tools      mbpoll socat curl openssl: $(command -v mbpoll) $(command -v socat) $(command -v curl) $(command -v openssl)")
}

# ---------------------------------------------------------------- mosquitto

setup_mosquitto() {
    local conf="$DIR/mosquitto.conf" logf="$DIR/mosquitto.log"
    if port_open "$MQTT_PORT"; then
        SUMMARY+=("mosquitto  mqtt://127.0.0.1:$MQTT_PORT (already running, reused)")
        return 0
    fi
    have mosquitto || apt_install mosquitto
    have mosquitto || die "mosquitto is still missing after apt-get install mosquitto"

    mkdir -p "$DIR/mosquitto-data"
    cat >"$conf" <<EOF
# Written by tests/backends.sh
user root
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $DIR/mosquitto-data/
pid_file $DIR/mosquitto.pid
log_dest file $logf
log_type error
log_type warning
log_type notice
log_type information
EOF
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT"
    : >>"$logf"
    mosquitto -d -c "$conf" >>"$logf" 2>&1 || { tail_log "$logf"; die "mosquitto -d -c $conf failed"; }
    wait_until "mosquitto on 127.0.0.1:$MQTT_PORT" "$logf" port_open "$MQTT_PORT"
    SUMMARY+=("mosquitto  mqtt://127.0.0.1:$MQTT_PORT (started, pid $(cat "$DIR/mosquitto.pid" 2>/dev/null || echo ?))")
}

# ---------------------------------------------------------------- mariadb

maria_tcp() { mariadb --no-defaults -h127.0.0.1 -P"$MARIADB_PORT" -uroot "$@"; }

# SQL that lets root log in over TCP from 127.0.0.1 with an empty password,
# keeping unix_socket login for root@localhost, and creates database test.
MARIA_FIX_SQL="
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'::1';
ALTER USER 'root'@'::1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS test;
"

setup_mariadb() {
    local data="$DIR/mysql-data" cnf="$DIR/my.cnf" logf="$DIR/mariadbd.log"
    local sock="$DIR/mariadbd.sock" how

    if ! have mariadb; then
        if port_open "$MARIADB_PORT"; then apt_install mariadb-client; else apt_install mariadb-server; fi
    fi
    if port_open "$MARIADB_PORT"; then
        if ! maria_tcp -e 'select 1' >/dev/null 2>&1; then
            # A server we did not start, where root may have unix_socket auth
            # only (Debian's default): fix it through the local socket.
            # Try our own instance's socket first, then the client's default
            # one (/run/mysqld/mysqld.sock on Debian).
            log "mariadb on port $MARIADB_PORT refuses root over TCP; trying to fix it via the unix socket"
            local fixed=0
            if [[ -S $sock ]] && mariadb --no-defaults --socket="$sock" -uroot -e "$MARIA_FIX_SQL"; then
                fixed=1
            elif mariadb -uroot --protocol=socket -e "$MARIA_FIX_SQL"; then
                fixed=1
            fi
            if ((fixed == 0)) || ! maria_tcp -e 'select 1' >/dev/null 2>&1; then
                die "something listens on 127.0.0.1:$MARIADB_PORT, but root cannot log in over TCP with an empty password (mariadb -h127.0.0.1 -P$MARIADB_PORT -uroot), and fixing that through the unix socket failed"
            fi
        fi
        how="already running, reused"
    else
        have mariadbd || apt_install mariadb-server
        have mariadbd || die "mariadbd is still missing after apt-get install mariadb-server"
        have mariadb-install-db || die "mariadb-install-db is missing (package mariadb-server)"

        cat >"$cnf" <<EOF
# Written by tests/backends.sh
[mariadbd]
user = root
datadir = $data
port = $MARIADB_PORT
bind-address = 127.0.0.1
socket = $sock
pid-file = $DIR/mariadbd.pid
log-error = $logf
skip-name-resolve
innodb_buffer_pool_size = 64M
innodb_log_file_size = 32M
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
EOF
        if [[ ! -f $data/.fieldline-initialized ]]; then
            log "mariadb-install-db into $data"
            rm -rf "$data"
            mkdir -p "$data"
            mariadb-install-db --defaults-file="$cnf" --user=root --datadir="$data" \
                --skip-test-db --skip-name-resolve --auth-root-authentication-method=normal \
                >"$DIR/mariadb-install-db.log" 2>&1 ||
                { tail_log "$DIR/mariadb-install-db.log"; die "mariadb-install-db failed"; }
            touch "$data/.fieldline-initialized"
        fi

        log "starting mariadbd on 127.0.0.1:$MARIADB_PORT"
        : >>"$logf"
        nohup setsid mariadbd --defaults-file="$cnf" </dev/null >>"$logf" 2>&1 &
        local starter=$!
        local deadline=$((SECONDS + WAIT_SECS))
        until mariadb --no-defaults --socket="$sock" -uroot -e 'select 1' >/dev/null 2>&1; do
            if ! kill -0 "$starter" 2>/dev/null; then
                tail_log "$logf"
                die "mariadbd exited during start-up (log: $logf)"
            fi
            if ((SECONDS >= deadline)); then
                tail_log "$logf"
                die "mariadbd did not answer on $sock within ${WAIT_SECS}s (log: $logf)"
            fi
            sleep 0.3
        done
        mariadb --no-defaults --socket="$sock" -uroot -e "$MARIA_FIX_SQL" ||
            die "could not set up root@127.0.0.1 and database test on the new mariadbd"
        how="started, pid $(cat "$DIR/mariadbd.pid" 2>/dev/null || echo ?)"
    fi

    maria_tcp -e 'CREATE DATABASE IF NOT EXISTS test' ||
        die "root@127.0.0.1:$MARIADB_PORT cannot create database test"
    maria_tcp -D test -e 'select 1' >/dev/null ||
        die "mariadb -h127.0.0.1 -P$MARIADB_PORT -uroot test does not work"
    SUMMARY+=("mariadb    mysql://root@127.0.0.1:$MARIADB_PORT/test ($how)")
}

# ---------------------------------------------------------------- influxdb

influx_ping() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$INFLUX_PORT/ping"; }

setup_influxdb() {
    local conf="$DIR/influxdb.conf" logf="$DIR/influxd.log" data="$DIR/influxdb"
    have curl || apt_install curl
    if influx_ping; then
        SUMMARY+=("influxdb   http://127.0.0.1:$INFLUX_PORT (already running, reused)")
        return 0
    fi
    if port_open "$INFLUX_PORT"; then
        die "something listens on 127.0.0.1:$INFLUX_PORT but does not answer /ping like InfluxDB"
    fi
    have influxd || apt_install influxdb
    have influxd || die "influxd is still missing after apt-get install influxdb"

    mkdir -p "$data/meta" "$data/data" "$data/wal"
    cat >"$conf" <<EOF
# Written by tests/backends.sh (InfluxDB 1.x)
reporting-disabled = true
bind-address = "127.0.0.1:$INFLUX_RPC_PORT"

[meta]
  dir = "$data/meta"

[data]
  dir = "$data/data"
  wal-dir = "$data/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:$INFLUX_PORT"
  auth-enabled = false
  log-enabled = false

[continuous_queries]
  enabled = false
EOF
    log "starting influxd on 127.0.0.1:$INFLUX_PORT"
    : >>"$logf"
    nohup setsid influxd -config "$conf" -pidfile "$DIR/influxd.pid" </dev/null >>"$logf" 2>&1 &
    local starter=$!
    local deadline=$((SECONDS + WAIT_SECS))
    until influx_ping; do
        if ! kill -0 "$starter" 2>/dev/null; then
            tail_log "$logf"
            die "influxd exited during start-up (log: $logf)"
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$logf"
            die "influxd did not answer http://127.0.0.1:$INFLUX_PORT/ping within ${WAIT_SECS}s (log: $logf)"
        fi
        sleep 0.3
    done
    SUMMARY+=("influxdb   http://127.0.0.1:$INFLUX_PORT (started, pid $(cat "$DIR/influxd.pid" 2>/dev/null || echo ?))")
}

# ---------------------------------------------------------------- victoria-metrics

vm_health() { [[ $(curl -sf --max-time 2 "http://127.0.0.1:$VM_PORT/health" 2>/dev/null) == OK ]]; }

# VictoriaMetrics takes the InfluxDB v2 write API (/api/v2/write), so it is the v2 peer of
# the tests. Flags: -search.latencyOffset=0s makes fresh samples readable at once;
# -dedup.minScrapeInterval=1ms keeps one sample per series and millisecond, so a replayed
# write stays idempotent as it is on InfluxDB; -retentionPeriod=100y keeps old timestamps.
setup_victoria_metrics() {
    local data="$DIR/victoria-metrics" logf="$DIR/victoria-metrics.log"
    have curl || apt_install curl
    if vm_health; then
        SUMMARY+=("victoria   http://127.0.0.1:$VM_PORT (already running, reused)")
        return 0
    fi
    if port_open "$VM_PORT"; then
        die "something listens on 127.0.0.1:$VM_PORT but does not answer /health like VictoriaMetrics"
    fi
    have victoria-metrics || apt_install victoria-metrics
    have victoria-metrics || die "victoria-metrics is still missing after apt-get install victoria-metrics"

    mkdir -p "$data"
    log "starting victoria-metrics on 127.0.0.1:$VM_PORT"
    : >>"$logf"
    nohup setsid victoria-metrics \
        -httpListenAddr="127.0.0.1:$VM_PORT" \
        -storageDataPath="$data" \
        -retentionPeriod=100y \
        -search.latencyOffset=0s \
        -dedup.minScrapeInterval=1ms \
        </dev/null >>"$logf" 2>&1 &
    local starter=$!
    echo "$starter" >"$DIR/victoria-metrics.pid"
    local deadline=$((SECONDS + WAIT_SECS))
    until vm_health; do
        if ! kill -0 "$starter" 2>/dev/null; then
            rm -f "$DIR/victoria-metrics.pid"
            tail_log "$logf"
            die "victoria-metrics exited during start-up (log: $logf)"
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$logf"
            die "victoria-metrics did not answer http://127.0.0.1:$VM_PORT/health within ${WAIT_SECS}s (log: $logf)"
        fi
        sleep 0.3
    done
    SUMMARY+=("victoria   http://127.0.0.1:$VM_PORT (started, pid $starter)")
}

# ---------------------------------------------------------------- venv

setup_venv() {
    [[ -f $REQUIREMENTS ]] || die "missing $REQUIREMENTS"
    local want have_hash="" stamp="$VENV/.fieldline-requirements.sha256"
    want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
    [[ -f $stamp ]] && have_hash=$(cat "$stamp")

    if [[ $want == "$have_hash" ]] && "$VENV/bin/python" -c 'import pymodbus' >/dev/null 2>&1; then
        SUMMARY+=("python     $VENV/bin/python (pymodbus $("$VENV/bin/python" -c 'import pymodbus; print(pymodbus.__version__)'), up to date)")
        return 0
    fi

    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        if ! have "$PYTHON" && [[ $PYTHON == python3 ]]; then
            apt_install python3 python3-venv
        fi
        have "$PYTHON" || die "$PYTHON not found (set FIELDLINE_PYTHON)"
        rm -rf "$VENV"
        log "creating venv $VENV"
        if ! "$PYTHON" -m venv "$VENV" >"$DIR/venv.log" 2>&1; then
            # Debian's own python3 needs python3-venv for this.
            apt_install python3-venv
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV" >"$DIR/venv.log" 2>&1 ||
                { tail_log "$DIR/venv.log"; die "$PYTHON -m venv $VENV failed"; }
        fi
    fi
    log "pip install -r $REQUIREMENTS"
    local t0=$SECONDS
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS" \
        >"$DIR/pip.log" 2>&1 ||
        { tail_log "$DIR/pip.log"; die "pip install -r $REQUIREMENTS failed"; }
    "$VENV/bin/python" -c 'import pymodbus' ||
        die "pymodbus does not import in $VENV after pip install"
    echo "$want" >"$stamp"
    log "pip install took $((SECONDS - t0))s"
    SUMMARY+=("python     $VENV/bin/python (pymodbus $("$VENV/bin/python" -c 'import pymodbus; print(pymodbus.__version__)'), installed)")
}

# ---------------------------------------------------------------- node

setup_node() {
    local manifest="$HERE/peers/package.json" dest="$DIR/node"
    [[ -f $manifest ]] || die "missing $manifest"
    local want have_hash="" stamp="$dest/.fieldline-package.sha256"
    want=$(sha256sum "$manifest" | cut -d' ' -f1)
    [[ -f $stamp ]] && have_hash=$(cat "$stamp")
    if ! have node || ! have npm; then
        apt_install nodejs npm
    fi
    if [[ $want == "$have_hash" && -d $dest/node_modules/node-opcua ]]; then
        SUMMARY+=("node       $dest/node_modules (node-opcua, up to date)")
        return 0
    fi
    mkdir -p "$dest"
    cp "$manifest" "$dest/package.json"
    log "npm install (node-opcua) into $dest"
    local t0=$SECONDS
    rm -f "$stamp"
    (cd "$dest" && npm install --no-audit --no-fund --omit=dev >"$DIR/npm.log" 2>&1) ||
        { tail_log "$DIR/npm.log"; die "npm install in $dest failed"; }
    node -e 'require(process.argv[1])' "$dest/node_modules/node-opcua" >/dev/null 2>&1 ||
        die "node-opcua does not load from $dest after npm install"
    echo "$want" >"$stamp"
    log "npm install took $((SECONDS - t0))s"
    SUMMARY+=("node       $dest/node_modules (node-opcua, installed)")
}

# ---------------------------------------------------------------- main

main() {
    mkdir -p "$DIR"
    local parts=() part
    if [[ ${1:-} == stop ]]; then
        shift
        if (($# == 0)); then parts=(mosquitto mariadb influxdb victoria-metrics); else parts=("$@"); fi
        stop_parts "${parts[@]}"
        return 0
    fi
    if (($# == 0)); then parts=("${ALL_PARTS[@]}"); else parts=("$@"); fi
    for part in "${parts[@]}"; do
        case $part in
        tools | mosquitto | mariadb | influxdb | victoria-metrics | venv | node) ;;
        *) die "unknown part '$part' (parts: ${ALL_PARTS[*]}, or: stop [PART...])" ;;
        esac
    done
    for part in "${parts[@]}"; do
        "setup_${part//-/_}"
    done
    printf '%s\n' "${SUMMARY[@]}"
}

main "$@"
