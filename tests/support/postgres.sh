#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:$EDGE_PG_PORT (default 5432) with trust auth
# and a database `test`, then prints its URL (the only line on stdout) for
# EDGE_TEST_POSTGRES_URL. When nothing answers there it installs Debian's `postgresql`
# (apt) if its binaries are missing and starts a throwaway cluster in a temp dir.
#
#   url=$(tests/support/postgres.sh)            # start or reuse
#   tests/support/postgres.sh stop [DATA_DIR]   # stop a cluster this script started
#
# It never touches an existing cluster beyond checking that it answers, and never listens
# on anything but 127.0.0.1. Progress goes to stderr.
set -euo pipefail

port="${EDGE_PG_PORT:-5432}"
url="postgres://postgres@127.0.0.1:${port}/test"
state_file="${TMPDIR:-/tmp}/edge-pg-${port}.datadir"

log() { echo "postgres.sh: $*" >&2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

find_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

answers() {
    # pg_isready may be missing before the install; fall back to bash's /dev/tcp.
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h 127.0.0.1 -p "$port"
    else
        (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
    fi
}

if [ "${1:-}" = "stop" ]; then
    data_dir="${2:-$(cat "$state_file" 2>/dev/null || true)}"
    [ -n "$data_dir" ] || { log "no cluster of this script known on port $port"; exit 1; }
    bin=$(find_bin) || { log "PostgreSQL binaries not found"; exit 1; }
    as_postgres "$bin/pg_ctl" -D "$data_dir" -m fast stop >&2
    rm -rf "$data_dir" "$state_file"
    exit 0
fi

if answers; then
    log "a PostgreSQL already answers on 127.0.0.1:$port"
    if command -v psql >/dev/null 2>&1; then
        psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
            | grep -q 1 || psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE test" >&2
    fi
    echo "$url"
    exit 0
fi

bin=$(find_bin || true)
if [ -z "$bin" ]; then
    log "installing Debian's postgresql"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >&2
    bin=$(find_bin) || { log "postgresql installed but initdb not found"; exit 1; }
fi

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/edge-pg-XXXXXX")
[ "$(id -u)" = 0 ] && chown postgres:postgres "$data_dir"
log "starting a throwaway cluster in $data_dir on 127.0.0.1:$port"
as_postgres "$bin/initdb" -D "$data_dir" -U postgres --auth=trust -E UTF8 >/dev/null
as_postgres "$bin/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w \
    -o "-h 127.0.0.1 -p $port -k $data_dir -c max_connections=300" start >&2
as_postgres "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE test" >&2
echo "$data_dir" > "$state_file"
log "stop it with: tests/support/postgres.sh stop $data_dir"
echo "$url"
