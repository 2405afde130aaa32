#!/usr/bin/env bash
# Metrics: see serve-common/benches/reload.rs.
source "$(dirname "$0")/lib.sh"
run_bench reload
