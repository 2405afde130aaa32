#!/usr/bin/env bash
# Metrics: see serve-common/benches/cached.rs.
source "$(dirname "$0")/lib.sh"
run_bench cached
