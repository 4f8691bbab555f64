#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:$EDGE_PG_PORT (default 5432) with trust auth
# and a database `test`, then prints its URL (the only line on stdout) for
# EDGE_TEST_POSTGRES_URL. When nothing answers there it installs Debian's `postgresql`
# (apt) if its binaries are missing and starts a throwaway cluster in a temp dir.
#
#   url=$(tests/support/postgres.sh)            # start or reuse
#   tests/support/postgres.sh stop [DATA_DIR]   # stop a cluster this script started
#
# Something already listening on the port must answer a query on the database `test` as
# user `postgres` (through psql; Debian's `postgresql-client` is installed if psql is
# missing), else the script fails and says what listens there: an open port alone proves
# nothing. It never touches an existing cluster beyond that check (and creating `test`),
# and never listens on anything but 127.0.0.1. Progress goes to stderr.
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

apt_install() {
    local sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    log "installing Debian's $*"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "$@" >&2
}

# Whether anything accepts connections on the port (PostgreSQL or not).
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
}

find_psql() {
    local bin
    if command -v psql >/dev/null 2>&1; then
        command -v psql
    elif bin=$(find_bin); then
        echo "$bin/psql"
    else
        return 1
    fi
}

# psql against the server on the port, bounded in time; prints what psql printed.
pg_query() {
    local database=$1 sql=$2
    PGCONNECT_TIMEOUT=5 timeout 30 "$psql" -X -h 127.0.0.1 -p "$port" -U postgres -d "$database" \
        -v ON_ERROR_STOP=1 -tAc "$sql" 2>&1
}

if [ "${1:-}" = "stop" ]; then
    data_dir="${2:-$(cat "$state_file" 2>/dev/null || true)}"
    [ -n "$data_dir" ] || { log "no cluster of this script known on port $port"; exit 1; }
    bin=$(find_bin) || { log "PostgreSQL binaries not found"; exit 1; }
    as_postgres "$bin/pg_ctl" -D "$data_dir" -m fast stop >&2
    rm -rf "$data_dir" "$state_file"
    exit 0
fi

if listening; then
    psql=$(find_psql || true)
    if [ -z "$psql" ]; then
        apt_install postgresql-client
        psql=$(find_psql) || { log "postgresql-client installed but psql not found"; exit 1; }
    fi
    not_postgres() {
        log "FAIL: something listens on 127.0.0.1:$port but it is not a PostgreSQL that answers queries as user"
        log "      'postgres' with trust auth: $1"
        log "      Stop what listens there, or choose another port with EDGE_PG_PORT (this script then starts a"
        log "      throwaway cluster on it), or set EDGE_TEST_POSTGRES_URL to a PostgreSQL that answers."
        exit 1
    }
    # The `postgres` database exists in every cluster; `test` may have to be created.
    answer=$(pg_query postgres "SELECT count(*) FROM pg_database WHERE datname = 'test'") || not_postgres "$answer"
    case "$answer" in
        1) ;;
        0) answer=$(pg_query postgres "CREATE DATABASE test") || not_postgres "CREATE DATABASE test failed: $answer" ;;
        *) not_postgres "unexpected answer to a query: $answer" ;;
    esac
    answer=$(pg_query test "SELECT 40 + 2") || not_postgres "$answer"
    [ "$answer" = 42 ] || not_postgres "SELECT 40 + 2 on database test answered: $answer"
    log "a PostgreSQL answers queries on 127.0.0.1:$port, database test"
    echo "$url"
    exit 0
fi

bin=$(find_bin || true)
if [ -z "$bin" ]; then
    apt_install postgresql
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
