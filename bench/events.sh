#!/usr/bin/env bash
# Metrics: see serve-common/benches/events.rs (events_exact_per_s,
# events_1000_patterns_per_s, notify_and_wait_us, events_async_per_s).
source "$(dirname "$0")/lib.sh"
run_bench events
