#!/usr/bin/env bash
# HTTP throughput of the example service (release, one process, 2 worker
# threads) on GET /manage/version, against a bare actix-web app answering
# the same path with the same threads (tests/src/bin/bare_actix.rs), with
# `wrk -t2 -c64 -d10s`, the three alternating 3 times; medians.
#   http_warn_rps:             level WARNING, no per-request lines, the
#                              management endpoints on their own listener
#                              (management.bind; wrk asks that one)
#   http_info_file_rps:        level INFO, file output on (2 lines/request)
#   http_info_file_lines_lost: 2 x requests - lines in the file (report-only)
set -euo pipefail
cd "$(dirname "$0")/.."

run() { echo "+ $*" >&2; "$@"; }

if ! command -v wrk >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    run $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive run $SUDO apt-get install -y -qq wrk curl >/dev/null
fi

run cargo build -q --release -p example-service
run cargo build -q --release -p serve-common-tests --bin bare_actix
TARGET=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
SERVICE="$TARGET/release/example-service"
BARE="$TARGET/release/bare_actix"

SCRATCH=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

PORT=18431
MANAGEMENT_PORT=18432
PUBLIC_URL="http://127.0.0.1:$PORT/manage/version"
URL="$PUBLIC_URL"
DURATION="${DURATION:-10s}"

wait_up() {
    for _ in $(seq 1 300); do
        curl -sf "$URL" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "the server did not come up on $URL" >&2
    exit 1
}

# Prints req/s; leaves wrk's total request count in $SCRATCH/requests.
measure() {
    local out
    out=$(run wrk -t2 -c64 -d"$DURATION" "$URL")
    echo "$out" | awk '/ requests in /{print $1}' > "$SCRATCH/requests"
    echo "$out" | awk '/^Requests\/sec:/{print $2}'
}

stop() {
    if ! kill -TERM "$1" 2>/dev/null; then
        echo "the server (pid $1) died during the run:" >&2
        cat "$SCRATCH"/service-*/stderr.log >&2 2>/dev/null || true
        exit 1
    fi
    wait "$1" 2>/dev/null || true
    PIDS=()
}

bare_run() {
    URL="$PUBLIC_URL"
    echo "+ $BARE 127.0.0.1:$PORT 2" >&2
    "$BARE" "127.0.0.1:$PORT" 2 >/dev/null 2>&1 &
    PIDS=($!)
    wait_up
    measure
    stop "${PIDS[0]}"
}

# $1: level, $2: "file" for the file output, "management" for a
# management listener of its own (measured there)
service_run() {
    local dir="$SCRATCH/service-$RANDOM"
    mkdir -p "$dir"
    {
        echo "[server]"
        echo "bind = \"127.0.0.1:$PORT\""
        echo "processes = 1"
        echo "workers = 2"
        echo "[logging]"
        echo "level = \"$1\""
        echo "stderr = false"
        if [ "$2" = file ]; then
            echo "file = \"bench.log\""
            echo "max_bytes = 100000000000"
        fi
        if [ "$2" = management ]; then
            echo "[management]"
            echo "bind = \"127.0.0.1:$MANAGEMENT_PORT\""
        fi
    } > "$dir/config.toml"
    URL="$PUBLIC_URL"
    [ "$2" = management ] && URL="http://127.0.0.1:$MANAGEMENT_PORT/manage/version"
    cat "$dir/config.toml" >&2
    echo "+ (cd $dir && SERVE_COMMON_CONFIG=$dir/config.toml $SERVICE)" >&2
    (cd "$dir" && SERVE_COMMON_CONFIG="$dir/config.toml" exec "$SERVICE" >"$dir/stderr.log" 2>&1) &
    PIDS=($!)
    wait_up
    local rps
    rps=$(measure)
    # SIGTERM: graceful stop, then the log file is flushed and closed.
    stop "${PIDS[0]}"
    if [ "$2" = file ]; then
        local requests lines
        requests=$(cat "$SCRATCH/requests")
        lines=$(grep -c -e 'hit /manage/version' -e 'request completed with' "$dir/logs/bench.log" || true)
        # wrk's requests plus wait_up's one, two lines each; requests the
        # server finished after wrk stopped counting only add lines.
        local expected=$(( 2 * (requests + 1) ))
        echo $(( expected > lines ? expected - lines : 0 )) >> "$SCRATCH/lost"
    fi
    echo "$rps"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$SCRATCH/bare"; : > "$SCRATCH/warn"; : > "$SCRATCH/info"; : > "$SCRATCH/lost"
for round in 1 2 3; do
    echo "round $round" >&2
    bare_run >> "$SCRATCH/bare"
    service_run WARNING management >> "$SCRATCH/warn"
    service_run INFO file >> "$SCRATCH/info"
done

BARE_RPS=$(median < "$SCRATCH/bare")
WARN_RPS=$(median < "$SCRATCH/warn")
INFO_RPS=$(median < "$SCRATCH/info")
LOST=$(sort -g "$SCRATCH/lost" | tail -1)
echo "runs (req/s): bare $(paste -sd' ' "$SCRATCH/bare"); warn $(paste -sd' ' "$SCRATCH/warn"); info+file $(paste -sd' ' "$SCRATCH/info"); lines lost $(paste -sd' ' "$SCRATCH/lost")" >&2
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.3f", a / b; else printf "nan" }'; }
echo "http_warn_rps: $WARN_RPS baseline: $BARE_RPS ratio: $(ratio "$WARN_RPS" "$BARE_RPS")"
echo "http_info_file_rps: $INFO_RPS baseline: $BARE_RPS ratio: $(ratio "$INFO_RPS" "$BARE_RPS")"
echo "http_info_file_lines_lost: $LOST baseline: - ratio: -"
