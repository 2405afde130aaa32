#!/usr/bin/env bash
# HTTP throughput of the example service (release, one process, 2 worker
# threads) on GET /manage/version, against a bare actix-web app answering
# the same path with the same threads (tests/src/bin/bare_actix.rs), with
# `wrk -t2 -c64 -d10s`, alternating 5 times (HTTP_BENCH_ROUNDS), each
# run beside its baseline and the order reversed every other round;
# medians.
#   http_warn_rps:             level WARNING, no per-request lines, the
#                              management endpoints on their own listener
#                              (management.bind; wrk asks that one)
#   http_info_file_rps:        level INFO, file output on (2 lines/request)
#   http_info_file_lines_lost: 2 x requests - lines in the file (report-only)
#   http_metrics_rps:          the http_warn_rps run (metrics on, the
#                              default); baseline: the same with
#                              `metrics.enabled = false`
#   http_peer_stack_rps:       the http_info_file_rps run (request ids,
#                              INFO lines to a file, metrics); baseline: the
#                              same features assembled by hand on bare
#                              actix-web (tests/src/bin/peer_stack.rs:
#                              tracing-actix-web, actix-web-prom,
#                              tracing-appender), same lines, same file
#   http_settings_rps:         the http_warn_rps run with CORS
#                              (`[server.cors]`) and compression
#                              (`server.compress`) on, the response under
#                              the compression minimum; baseline: the
#                              http_warn_rps run
#   metrics_scrape_ms:         median of 30 `GET /manage/metrics` of a
#                              service with 2 worker processes and about
#                              1,000 series (tests/src/bin/metrics_service.rs;
#                              the series count is printed; report-only)
set -euo pipefail
cd "$(dirname "$0")/.."

run() { echo "+ $*" >&2; "$@"; }

if ! command -v wrk >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    run $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive run $SUDO apt-get install -y -qq wrk curl >/dev/null
fi

run cargo build -q --release -p example-service --features serve-common/compress
run cargo build -q --release -p serve-common-tests --bin bare_actix --bin peer_stack --bin metrics_service
TARGET=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
SERVICE="$TARGET/release/example-service"
BARE="$TARGET/release/bare_actix"
PEER="$TARGET/release/peer_stack"
METRICS_SERVICE="$TARGET/release/metrics_service"

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

peer_run() {
    URL="$PUBLIC_URL"
    local dir="$SCRATCH/peer-$RANDOM"
    mkdir -p "$dir"
    echo "+ $PEER 127.0.0.1:$PORT 2 $dir/peer.log" >&2
    "$PEER" "127.0.0.1:$PORT" 2 "$dir/peer.log" >/dev/null 2>&1 &
    PIDS=($!)
    wait_up
    measure
    stop "${PIDS[0]}"
}

# $1: level, $2: "file" for the file output, "management" for a
# management listener of its own (measured there), "management-nometrics"
# for that with metrics off
service_run() {
    local dir="$SCRATCH/service-$RANDOM"
    mkdir -p "$dir"
    {
        echo "[server]"
        echo "bind = \"127.0.0.1:$PORT\""
        echo "processes = 1"
        echo "workers = 2"
        if [ "$2" = management-settings ]; then
            echo "compress = true"
        fi
        echo "[logging]"
        echo "level = \"$1\""
        echo "stderr = false"
        if [ "$2" = file ]; then
            echo "file = \"bench.log\""
            echo "max_bytes = 100000000000"
        fi
        if [ "$2" = management ] || [ "$2" = management-nometrics ] || [ "$2" = management-settings ]; then
            echo "[management]"
            echo "bind = \"127.0.0.1:$MANAGEMENT_PORT\""
        fi
        if [ "$2" = management-nometrics ]; then
            echo "[metrics]"
            echo "enabled = false"
        fi
        if [ "$2" = management-settings ]; then
            echo "[server.cors]"
            echo "allowed_origins = [\"https://app.example.com\"]"
        fi
    } > "$dir/config.toml"
    URL="$PUBLIC_URL"
    [ "$2" = management ] || [ "$2" = management-nometrics ] || [ "$2" = management-settings ] \
        && URL="http://127.0.0.1:$MANAGEMENT_PORT/manage/version"
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
: > "$SCRATCH/nometrics"; : > "$SCRATCH/peer"; : > "$SCRATCH/settings"
# Each run beside the one it is compared with, the order reversed every
# other round: what a neighbour on this shared machine does weighs on both.
ROUNDS="${HTTP_BENCH_ROUNDS:-5}"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round" >&2
    if [ $((round % 2)) = 1 ]; then
        bare_run >> "$SCRATCH/bare"
        service_run WARNING management >> "$SCRATCH/warn"
        service_run WARNING management-settings >> "$SCRATCH/settings"
        service_run WARNING management-nometrics >> "$SCRATCH/nometrics"
        service_run INFO file >> "$SCRATCH/info"
        peer_run >> "$SCRATCH/peer"
    else
        peer_run >> "$SCRATCH/peer"
        service_run INFO file >> "$SCRATCH/info"
        service_run WARNING management-nometrics >> "$SCRATCH/nometrics"
        service_run WARNING management-settings >> "$SCRATCH/settings"
        service_run WARNING management >> "$SCRATCH/warn"
        bare_run >> "$SCRATCH/bare"
    fi
done

# The scrape: 2 workers, ~1,000 series; 30 timed scrapes after 5 warm-ups.
scrape_dir="$SCRATCH/scrape-service"
mkdir -p "$scrape_dir"
printf '[server]\nbind = "127.0.0.1:%s"\nprocesses = 2\nworkers = 2\n[logging]\nlevel = "WARNING"\nstderr = false\n' "$PORT" > "$scrape_dir/config.toml"
cat "$scrape_dir/config.toml" >&2
echo "+ (cd $scrape_dir && SERVE_COMMON_CONFIG=$scrape_dir/config.toml $METRICS_SERVICE)" >&2
(cd "$scrape_dir" && SERVE_COMMON_CONFIG="$scrape_dir/config.toml" exec "$METRICS_SERVICE" >"$scrape_dir/stderr.log" 2>&1) &
PIDS=($!)
URL="http://127.0.0.1:$PORT/manage/metrics"
wait_up
# Both workers up and recording: each answers /ok with its pid.
for _ in $(seq 1 300); do
    [ "$(for _ in 1 2 3 4 5 6 7 8; do curl -sf "http://127.0.0.1:$PORT/ok"; echo; done | sort -u | wc -l)" -ge 2 ] && break
    sleep 0.05
done
for _ in 1 2 3 4 5; do curl -sf "$URL" >/dev/null; done
SERIES=$(curl -sf "$URL" | grep -vc '^#')
echo "+ 30 x curl -s -o /dev/null -w '%{time_total}' $URL" >&2
: > "$SCRATCH/scrape"
for _ in $(seq 1 30); do
    curl -s -o /dev/null -w '%{time_total}\n' "$URL" | awk '{printf "%.3f\n", $1 * 1000}' >> "$SCRATCH/scrape"
done
MISSING=$(curl -sf "$URL" | awk '/^serve_common_scrape_missing_workers/{print $2}')
stop "${PIDS[0]}"

BARE_RPS=$(median < "$SCRATCH/bare")
WARN_RPS=$(median < "$SCRATCH/warn")
INFO_RPS=$(median < "$SCRATCH/info")
LOST=$(sort -g "$SCRATCH/lost" | tail -1)
NOMETRICS_RPS=$(median < "$SCRATCH/nometrics")
PEER_RPS=$(median < "$SCRATCH/peer")
SETTINGS_RPS=$(median < "$SCRATCH/settings")
SCRAPE_MS=$(median < "$SCRATCH/scrape")
echo "runs (req/s): bare $(paste -sd' ' "$SCRATCH/bare"); warn $(paste -sd' ' "$SCRATCH/warn"); warn, metrics off $(paste -sd' ' "$SCRATCH/nometrics"); info+file $(paste -sd' ' "$SCRATCH/info"); peer stack $(paste -sd' ' "$SCRATCH/peer"); cors+compress $(paste -sd' ' "$SCRATCH/settings"); lines lost $(paste -sd' ' "$SCRATCH/lost")" >&2
echo "scrape: $SERIES series, missing workers $MISSING; ms $(paste -sd' ' "$SCRATCH/scrape")" >&2
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.3f", a / b; else printf "nan" }'; }
echo "http_warn_rps: $WARN_RPS baseline: $BARE_RPS ratio: $(ratio "$WARN_RPS" "$BARE_RPS")"
echo "http_info_file_rps: $INFO_RPS baseline: $BARE_RPS ratio: $(ratio "$INFO_RPS" "$BARE_RPS")"
echo "http_info_file_lines_lost: $LOST baseline: - ratio: -"
echo "http_metrics_rps: $WARN_RPS baseline: $NOMETRICS_RPS ratio: $(ratio "$WARN_RPS" "$NOMETRICS_RPS")"
echo "http_peer_stack_rps: $INFO_RPS baseline: $PEER_RPS ratio: $(ratio "$INFO_RPS" "$PEER_RPS")"
echo "http_settings_rps: $SETTINGS_RPS baseline: $WARN_RPS ratio: $(ratio "$SETTINGS_RPS" "$WARN_RPS")"
echo "metrics_scrape_ms: $SCRAPE_MS baseline: - ratio: -"
