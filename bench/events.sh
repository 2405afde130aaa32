#!/usr/bin/env bash
# Metrics: see serve-common/benches/events.rs.
source "$(dirname "$0")/lib.sh"
run_bench events
