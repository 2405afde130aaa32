#!/usr/bin/env bash
# Metrics: see serve-common/benches/logging.rs.
source "$(dirname "$0")/lib.sh"
run_bench logging
