#!/usr/bin/env bash
# Metrics: see serve-common/benches/ipc.rs.
source "$(dirname "$0")/lib.sh"
run_bench ipc
