# Sourced by scripts/test (and the benchmark scripts): starts a throw-away
# PostgreSQL cluster on a free local port and exports MARTMAP_TEST_POSTGRES_URL;
# the caller stops and removes it with stop_postgres (in its EXIT trap).
# Installs the server from Debian's packages when initdb/pg_ctl are missing.

postgres_bin() {
    local initdb
    initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$initdb" ]; then
        echo "==> installing PostgreSQL (apt-get install postgresql)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    fi
    dirname "$(readlink -f "$initdb")"
}

# Runs a command as the cluster's owner: initdb refuses to run as root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local bin port dir
    bin=$(postgres_bin)
    dir=$(mktemp -d /tmp/martmap-postgres.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres; chown postgres "$dir"; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U martmap --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
        || { cat "$dir/server.log" >&2; return 1; }
    export MARTMAP_TEST_POSTGRES_URL="postgres://martmap@127.0.0.1:$port/postgres"
    export MARTMAP_POSTGRES_DIR="$dir" MARTMAP_POSTGRES_BIN="$bin"

    echo "==> PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on port $port" >&2
}

stop_postgres() {
    [ -n "${MARTMAP_POSTGRES_DIR:-}" ] || return 0
    as_owner "$MARTMAP_POSTGRES_BIN/pg_ctl" -D "$MARTMAP_POSTGRES_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$MARTMAP_POSTGRES_DIR"
}
