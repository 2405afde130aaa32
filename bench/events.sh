#!/usr/bin/env bash
# Builds in release and runs serve-common/benches/events.rs, which measures the
# metrics and their baselines in the same run and prints one line per metric:
#   <metric>: <value> baseline: <value> ratio: <value/baseline>
set -euo pipefail
cd "$(dirname "$0")/.."
echo "+ cargo bench -q -p serve-common --bench events --no-run"
cargo bench -q -p serve-common --bench events --no-run
echo "+ cargo bench -q -p serve-common --bench events"
cargo bench -q -p serve-common --bench events 2>/dev/null | grep -E '^[a-z_0-9]+: .* baseline: .* ratio: '
