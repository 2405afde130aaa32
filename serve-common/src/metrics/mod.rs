//! Metrics in the Prometheus text format, for the whole service from one
//! scrape: `GET /manage/metrics` (feature `metrics`, on by default).
//!
//! serve-common installs a recorder for the [`metrics`] facade
//! when the service starts (`#[serve_common::main]` or
//! [`default::actix::serve`](crate::default::actix::serve)), so what the
//! application records with the facade's macros, re-exported here and in
//! the prelude, lands in the same scrape:
//!
//! ```
//! use serve_common::metrics::{counter, histogram};
//!
//! fn job_done(kind: &'static str, seconds: f64) {
//!     counter!("jobs_done_total", "kind" => kind).increment(1);
//!     histogram!("job_duration_seconds").record(seconds);
//! }
//! # job_done("mail", 0.2);
//! ```
//!
//! # What serve-common records
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | `method`, `route` (the route's template, `/hello/{name}`; `<unmatched>` for every path no route matches), `status` (the code) |
//! | `http_request_duration_seconds` | histogram | `method`, `route`: until the response's head is ready |
//! | `serve_common_events_notified_total`, `serve_common_events_received_total` | counter | |
//! | `serve_common_event_handler_calls_total`, `serve_common_event_handler_failures_total` (errors and panics), `serve_common_event_handler_panics_total` | counter | |
//! | `serve_common_events_sent_total` | counter | `link` (`ipc`, `nats`) |
//! | `serve_common_events_dropped_total` | counter | `link`, `reason` (`outgoing`: the buffer was full or the event too large; `incoming`: this process was too far behind; `malformed`; IPC: `one_per_service`, `cut_off`; NATS: `oversize`) |
//! | `serve_common_event_link_up`, `serve_common_event_link_buffered` | gauge | `link` |
//! | `serve_common_config_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `serve_common_config_sets_total` | counter | |
//! | `serve_common_log_lines_total`, `serve_common_log_lines_dropped_total` | counter | lines written to log files, and lost |
//! | `process_cpu_seconds_total` | counter | (whole seconds: `metrics-process`) |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, `process_threads` | gauge | |
//! | `serve_common_build_info` | gauge (1) | `version` (serve-common's), `app_version` ([`set_version`](crate::default::management::set_version)) |
//! | `serve_common_scrape_missing_workers` | gauge | |
//!
//! Recording a request takes no lock: each actix thread keeps the handles
//! of the routes it served, and a handle is a set of atomics. The other
//! serve-common metrics are read at scrape time from counters kept anyway.
//!
//! # Worker processes
//!
//! With `server.processes = N > 1`, a scrape of any worker answers for
//! the service: the worker asks the supervisor and the other workers over
//! the IPC link and waits up to `metrics.gather_timeout_ms` for them.
//! Counters and histograms are summed (no `pid` label); gauges are given
//! per process, with a `pid` label (the supervisor's included), and so are
//! the scraped process's own when it runs alone.
//!
//! - A worker that does not answer in time counts with the last values the
//!   scraped worker saw of it (every answer goes to every process), and
//!   `serve_common_scrape_missing_workers` says how many did not answer;
//!   its gauges are left out of that scrape.
//! - A worker that exits (crashed, or replaced) keeps counting with the
//!   last values the supervisor saw of it: every value a scrape reported
//!   went to the supervisor too, so no counter of the service goes down
//!   and Prometheus' `rate()` sees no reset.
//! - Over NATS (no IPC link between the workers), a scrape answers for the
//!   scraped process alone: scrape each process, or add a `pid` label of
//!   your own.
//!
//! # Config (`[metrics]`, read when the service starts)
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `metrics.enabled` | `true` | record requests and serve `/manage/metrics` (also listed in `management.expose`) |
//! | `metrics.exclude` | `[]` | route templates (globs: `"/manage/*"`) whose requests are not recorded |
//! | `metrics.buckets` | `[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]` | the histograms' bucket bounds (every histogram's, the application's too) |
//! | `metrics.gather_timeout_ms` | `250` | how long a scrape waits for the other processes |
//!
//! The text format is Prometheus' 0.0.4 (`text/plain; version=0.0.4`),
//! written with `metrics-exporter-prometheus`' writers; OpenMetrics is not
//! offered (that crate does not write it).

mod collect;
mod gather;
#[cfg(feature = "actix")]
pub(crate) mod http;
mod recorder;
mod snapshot;

use std::time::Duration;

use once_cell::sync::OnceCell;

pub use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
pub use recorder::ServiceRecorder;

#[cfg(feature = "actix")]
pub(crate) use gather::{worker_exited, worker_started};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `[metrics]` config section (see the [module docs](self)).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Record requests and serve `/manage/metrics`.
    pub enabled: bool,
    /// Route templates (globs) whose requests are not recorded.
    pub exclude: Vec<String>,
    /// The histograms' bucket bounds.
    pub buckets: Vec<f64>,
    /// How long a scrape waits for the other processes, in milliseconds.
    pub gather_timeout_ms: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            exclude: Vec::new(),
            buckets: recorder::DEFAULT_BUCKETS.to_vec(),
            gather_timeout_ms: 250,
        }
    }
}

impl MetricsSettings {
    /// Whether the settings can be used: buckets finite, strictly
    /// increasing, at most 100; globs that compile; a timeout of at most
    /// 10 s.
    pub fn validate(&self) -> Result<(), String> {
        if self.buckets.is_empty() || self.buckets.len() > 100 {
            return Err("`buckets`: give between 1 and 100 bounds".to_owned());
        }
        if self.buckets.iter().any(|b| !b.is_finite()) {
            return Err("`buckets`: bounds must be finite (+Inf is implied)".to_owned());
        }
        if self.buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err("`buckets`: bounds must be strictly increasing".to_owned());
        }
        if self.gather_timeout_ms > 10_000 {
            return Err("`gather_timeout_ms`: at most 10000".to_owned());
        }
        self.exclusions().map(drop)
    }

    pub(crate) fn exclusions(&self) -> Result<globset::GlobSet, String> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &self.exclude {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`exclude`: {e}"))?;
            set.add(glob);
        }
        set.build().map_err(|e| format!("`exclude`: {e}"))
    }

    /// Registers the section on `config` (checked from now on).
    pub fn register(
        config: &crate::config::Config,
    ) -> Result<crate::config::Section<Self>, crate::config::ConfigError> {
        config.section_with("metrics", Self::validate)
    }
}

struct Installed {
    recorder: &'static ServiceRecorder,
    settings: MetricsSettings,
    process: metrics_process::Collector,
}

static INSTALLED: OnceCell<Installed> = OnceCell::new();

/// Installs serve-common's recorder as the `metrics` facade's global one
/// (once; later calls return the same), with the global config's
/// `[metrics]` settings, and starts answering other processes' scrapes.
/// The service calls it when it starts. If the application installed a
/// recorder of its own first, that one keeps the facade (a WARN says so)
/// and the scrape shows serve-common's metrics only.
pub fn install() -> &'static ServiceRecorder {
    installed().recorder
}

fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| {
        let settings = crate::config::config()
            .get_or("metrics", MetricsSettings::default());
        let settings = match settings.validate() {
            Ok(()) => settings,
            Err(error) => {
                tracing::warn!(%error, "bad [metrics] settings: using the defaults");
                MetricsSettings::default()
            }
        };
        let recorder: &'static ServiceRecorder =
            Box::leak(Box::new(ServiceRecorder::new(&settings.buckets)));
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a `metrics` recorder was installed before serve-common's: application metrics are not in /manage/metrics"
            );
        }
        let process = metrics_process::Collector::default();
        ::metrics::with_local_recorder(recorder, || process.describe());
        crate::event::bus().add_inbound_hook(gather::on_event);
        Installed {
            recorder,
            settings,
            process,
        }
    })
}

/// The settings the recorder was installed with.
pub(crate) fn settings() -> &'static MetricsSettings {
    &installed().settings
}

/// This process's metrics now (serve-common's and the application's).
fn local_snapshot() -> snapshot::Snapshot {
    let installed = installed();
    ::metrics::with_local_recorder(installed.recorder, || installed.process.collect());
    let mut snapshot = installed.recorder.snapshot();
    collect::internal(&mut snapshot);
    snapshot
}

/// This process's metrics, in the text format ([`CONTENT_TYPE`]), each
/// gauge with a `pid` label.
pub fn render() -> String {
    let local = local_snapshot();
    let mut total = snapshot::Snapshot::default();
    total.add_sums(&local);
    total.add_gauges(&local, std::process::id());
    total.render()
}

/// The service's metrics, in the text format ([`CONTENT_TYPE`]): in a
/// worker process, summed with the other processes' (see [worker
/// processes](self#worker-processes)); elsewhere as [`render`].
pub async fn render_service() -> String {
    let timeout = Duration::from_millis(settings().gather_timeout_ms);
    gather::service_snapshot(timeout).await.render()
}
