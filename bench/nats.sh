#!/usr/bin/env bash
# Events over NATS (JetStream and at most once) vs bare async-nats on the
# same nats-server, same run, alternating. Metrics: see
# serve-common/benches/nats.rs.
source "$(dirname "$0")/lib.sh"
if ! command -v nats-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "+ apt-get install nats-server"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
echo "+ cargo bench -q -p serve-common --features nats --bench nats --no-run"
cargo bench -q -p serve-common --features nats --bench nats --no-run
echo "+ cargo bench -q -p serve-common --features nats --bench nats"
cargo bench -q -p serve-common --features nats --bench nats 2>/dev/null | grep -E '^([a-z_0-9]+: .* baseline: .* ratio: |# )'
