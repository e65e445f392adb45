# Sourced by scripts/test: starts the tansu broker (an Apache-Kafka-compatible
# broker from crates.io) with in-memory storage on a free local port, exports
# MARTMAP_TEST_KAFKA_BOOTSTRAP, and stops it when the calling script exits.
# Installs tansu when it is missing (about 15 minutes on 2 cores): 0.6.0,
# with its SQLite storage engine too, which the SASL_SSL tests need (tansu
# keeps SCRAM users only in a database), in a directory of its own put
# first on PATH; MARTMAP_TEST_TANSU_SCRAM names it for those tests.

TANSU_ROOT="${MARTMAP_TANSU_ROOT:-$HOME/.cache/martmap-tansu}"

ensure_tansu() {
    if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
        echo "==> installing tansu 0.6.0 (cargo install tansu --features dynostore,libsql)" >&2
        cargo install tansu --version 0.6.0 --locked --features dynostore,libsql \
            --root "$TANSU_ROOT" >&2
    fi
    export PATH="$TANSU_ROOT/bin:$PATH"
    export MARTMAP_TEST_TANSU_SCRAM="$TANSU_ROOT/bin/tansu"
}

# The TLS proxy the SASL_SSL tests put in front of tansu.
ensure_stunnel() {
    if ! command -v stunnel4 >/dev/null 2>&1; then
        echo "==> installing stunnel4 (apt-get install stunnel4)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >&2
    fi
}

start_kafka() {
    ensure_tansu
    local port dir
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    dir=$(mktemp -d /tmp/martmap-kafka.XXXXXX)
    tansu broker \
        --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        >"$dir/broker.log" 2>&1 &
    export MARTMAP_KAFKA_PID=$! MARTMAP_KAFKA_DIR="$dir"
    export MARTMAP_TEST_KAFKA_BOOTSTRAP="127.0.0.1:$port"
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "==> tansu on port $port" >&2
            return 0
        fi
        kill -0 "$MARTMAP_KAFKA_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "tansu did not start:" >&2
    cat "$dir/broker.log" >&2
    return 1
}

stop_kafka() {
    [ -n "${MARTMAP_KAFKA_PID:-}" ] || return 0
    kill "$MARTMAP_KAFKA_PID" 2>/dev/null || true
    wait "$MARTMAP_KAFKA_PID" 2>/dev/null || true
    rm -rf "$MARTMAP_KAFKA_DIR"
}
