//! serve-common's own metrics, read from the counters the event bus, the
//! links, the config and logging keep anyway (nothing is recorded for
//! them on their paths), and the process' readings from `/proc`.

use super::snapshot::Snapshot;
use crate::{config, event};

/// Adds this process's serve-common metrics to `snapshot`.
pub(super) fn internal(snapshot: &mut Snapshot) {
    events(snapshot);
    links(snapshot);
    config_and_logging(snapshot);
    #[cfg(feature = "actix")]
    {
        let malformed = "serve_common_traceparent_malformed_total";
        snapshot.counter(malformed, &[], crate::trace_context::malformed());
        snapshot.describe(
            malformed,
            "Requests whose traceparent header was malformed (ignored: a new trace)",
        );
    }
    snapshot.gauge(
        "serve_common_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("app_version", &app_version()),
        ],
        1.0,
    );
    snapshot.describe(
        "serve_common_build_info",
        "Always 1: the versions of serve-common and of the application, as labels",
    );
}

fn app_version() -> String {
    #[cfg(feature = "actix")]
    {
        crate::default::management::version()
    }
    #[cfg(not(feature = "actix"))]
    {
        "unknown".to_owned()
    }
}

fn events(snapshot: &mut Snapshot) {
    let stats = event::bus().stats();
    let rows: [(&str, &str, u64); 4] = [
        (
            "serve_common_events_notified_total",
            "Events notified in this service",
            stats.notified,
        ),
        (
            "serve_common_events_received_total",
            "Events received from other processes (IPC or NATS)",
            stats.received,
        ),
        (
            "serve_common_event_handler_calls_total",
            "Event handler calls",
            stats.handler_runs,
        ),
        (
            "serve_common_event_handler_panics_total",
            "Event handler calls that panicked",
            stats.panics,
        ),
    ];
    for (name, help, value) in rows {
        snapshot.counter(name, &[], value);
        snapshot.describe(name, help);
    }
    let failures = "serve_common_event_handler_failures_total";
    snapshot.counter(failures, &[], stats.failures);
    snapshot.describe(
        failures,
        "Event handler calls that returned an error or panicked",
    );
}

fn links(snapshot: &mut Snapshot) {
    let dropped = "serve_common_events_dropped_total";
    let up = "serve_common_event_link_up";
    let waiting = "serve_common_event_link_buffered";
    let sent = "serve_common_events_sent_total";
    snapshot.describe(
        dropped,
        "Events a link dropped (by link and reason); each is also logged",
    );
    snapshot.describe(up, "1 while the link is connected, else 0");
    snapshot.describe(
        waiting,
        "Events notified here that wait to be sent (or acknowledged)",
    );
    snapshot.describe(sent, "Events a link sent to other processes");
    if let Some(link) = event::ipc_link() {
        let ipc = [("link", "ipc")];
        snapshot.gauge(up, &ipc, f64::from(u8::from(link.is_up())));
        snapshot.gauge(waiting, &ipc, link.waiting() as f64);
        snapshot.counter(sent, &ipc, link.sent());
        for (reason, value) in [
            ("outgoing", link.dropped_outgoing()),
            ("incoming", link.dropped_incoming()),
            ("malformed", link.malformed()),
            ("one_per_service", link.dropped_shared()),
            ("cut_off", link.missed()),
        ] {
            snapshot.counter(dropped, &[("link", "ipc"), ("reason", reason)], value);
        }
    }
    #[cfg(feature = "nats")]
    if let Some(link) = event::nats::link() {
        let nats = [("link", "nats")];
        snapshot.gauge(up, &nats, f64::from(u8::from(link.connected())));
        snapshot.gauge(waiting, &nats, link.buffered() as f64);
        snapshot.counter(sent, &nats, link.sent());
        for (reason, value) in [
            ("outgoing", link.dropped()),
            ("oversize", link.oversize()),
            ("incoming", link.dropped_incoming()),
            ("malformed", link.malformed()),
        ] {
            snapshot.counter(dropped, &[("link", "nats"), ("reason", reason)], value);
        }
    }
}

fn config_and_logging(snapshot: &mut Snapshot) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &config::STATS;
    let reloads = "serve_common_config_reloads_total";
    snapshot.counter(reloads, &[("result", "ok")], stats.reloads.load(Relaxed));
    snapshot.counter(
        reloads,
        &[("result", "error")],
        stats.reload_failures.load(Relaxed),
    );
    snapshot.describe(
        reloads,
        "Config file reloads, by result (an error keeps the old config)",
    );
    let sets = "serve_common_config_sets_total";
    snapshot.counter(sets, &[], stats.sets.load(Relaxed));
    snapshot.describe(sets, "Runtime config sets and unsets made in this service");
    let (written, lost) = crate::default::logging::line_counts();
    let lines = "serve_common_log_lines_total";
    let dropped = "serve_common_log_lines_dropped_total";
    snapshot.counter(lines, &[], written);
    snapshot.counter(dropped, &[], lost);
    snapshot.describe(lines, "Lines written to log files");
    snapshot.describe(
        dropped,
        "Lines lost because a log file could not be written",
    );
}
