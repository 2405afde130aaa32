#!/usr/bin/env bash
# Metrics: see serve-common/benches/config.rs.
source "$(dirname "$0")/lib.sh"
run_bench config
