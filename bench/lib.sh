# Shared by bench/<name>.sh: builds serve-common/benches/<name>.rs in
# release, runs it (it measures the metrics and their baselines in the same
# run) and keeps its metric lines:
#   <metric>: <value> baseline: <value> ratio: <value/baseline>
# and its notes (lines starting with "# ": the figures behind a median).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_bench() {
    echo "+ cargo bench -q -p serve-common --bench $1 --no-run"
    cargo bench -q -p serve-common --bench "$1" --no-run
    echo "+ cargo bench -q -p serve-common --bench $1"
    cargo bench -q -p serve-common --bench "$1" 2>/dev/null | grep -E '^([a-z_0-9]+: .* baseline: .* ratio: |# )'
}
