//! OpenTelemetry export of request spans over OTLP (HTTP/protobuf),
//! feature `otel` (off by default).
//!
//! With `telemetry.otlp.endpoint` set (say `"http://127.0.0.1:4318"`;
//! `/v1/traces` is added unless the URL has a path), every request is
//! exported as a server span named `<METHOD> <route template>`, with the
//! attributes `http.request.method`, `http.route`,
//! `http.response.status_code` and `request_id`, in the trace of the
//! request's [`traceparent`](crate::trace_context) (its parent the
//! caller's span), the service's name and version as resource attributes
//! (`service.name`: `telemetry.service_name`, else the application crate's
//! name; `service.version`: the version `/manage/version` answers when
//! the first batch leaves). The
//! span ids are the ones [`trace_context::current`](crate::trace_context::current)
//! hands out, so a call made with its headers continues the exported trace.
//!
//! - Spans leave in batches from a thread of the SDK's: a request never
//!   waits for the collector. A failed export is logged at WARN at most
//!   once a minute (with how many failed since), never more.
//! - [`shutdown`] (the main macro calls it on the way out) exports what is
//!   batched, waiting up to 5 s.
//! - Without the endpoint nothing is recorded for OpenTelemetry at all.
//!
//! | key | default | |
//! |---|---|---|
//! | `telemetry.otlp.endpoint` | none | the collector's OTLP/HTTP URL |
//! | `telemetry.otlp.timeout_ms` | `10000` | one export's timeout |
//! | `telemetry.service_name` | the crate's name | `service.name` |
//!
//! Read when the service starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::trace_context::{SpanId, TraceContext, TraceId};

/// The `[telemetry]` config section.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `[telemetry.otlp]`.
    pub otlp: OtlpSettings,
    /// `service.name` (default: the application crate's name).
    pub service_name: Option<String>,
}

/// The `[telemetry.otlp]` config section.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP URL.
    pub endpoint: Option<String>,
    /// One export's timeout, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout_ms: 10_000,
        }
    }
}

impl TelemetrySettings {
    /// Whether the settings can be used: an `http://` or `https://` URL.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!(
                    "`otlp.endpoint`: {endpoint:?} is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }

    /// Registers the section on `config`.
    pub fn register(
        config: &crate::config::Config,
    ) -> Result<crate::config::Section<Self>, crate::config::ConfigError> {
        config.section_with("telemetry", Self::validate)
    }
}

/// Whether spans are recorded for OpenTelemetry (an endpoint is set).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static EXPORTER: OnceCell<opentelemetry_otlp::SpanExporter> = OnceCell::new();
/// The exporter [`install`] made, and the service's name: it takes its
/// resource (the version then, which `main` may have set meanwhile) at
/// the first export.
static PENDING: Mutex<Option<(opentelemetry_otlp::SpanExporter, String)>> = Mutex::new(None);
static PROVIDER: OnceCell<SdkTracerProvider> = OnceCell::new();

/// Failed exports, and when one was last logged.
static FAILED: AtomicU64 = AtomicU64::new(0);
static LOGGED: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// The SDK's exporter: forwards to the OTLP exporter once [`install`]
/// made one (the subscriber, and so the SDK, exist before the config is
/// read); reports failures, rate-limited.
#[derive(Debug)]
struct LateExporter;

impl SpanExporter for LateExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Not called concurrently (the SDK's contract).
        if EXPORTER.get().is_none() {
            let pending = PENDING.lock().take();
            if let Some((mut exporter, name)) = pending {
                exporter.set_resource(
                    &Resource::builder()
                        .with_service_name(name)
                        .with_attribute(KeyValue::new("service.version", service_version()))
                        .build(),
                );
                let _ = EXPORTER.set(exporter);
            }
        }
        let Some(exporter) = EXPORTER.get() else {
            return Ok(());
        };
        let spans = batch.len();
        let result = exporter.export(batch).await;
        if let Err(error) = &result {
            report_failure(spans, error);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        EXPORTER
            .get()
            .map_or(Ok(()), |e| e.shutdown_with_timeout(timeout))
    }

    fn force_flush(&self) -> OTelSdkResult {
        EXPORTER.get().map_or(Ok(()), SpanExporter::force_flush)
    }
}

fn report_failure(spans: usize, error: &dyn std::fmt::Display) {
    let failed = FAILED.fetch_add(1, Ordering::Relaxed) + 1;
    let mut logged = LOGGED.lock();
    let due = logged.is_none_or(|(at, _)| at.elapsed() >= Duration::from_secs(60));
    if due {
        let since = logged.map_or(failed, |(_, count)| failed - count);
        *logged = Some((Instant::now(), failed));
        drop(logged);
        tracing::warn!(
            target: "serve_common::telemetry",
            %error,
            spans,
            failed_exports = since,
            "OpenTelemetry export failed (logged at most once a minute)"
        );
    }
}

/// Failed OTLP exports so far.
pub fn failed_exports() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

fn provider() -> &'static SdkTracerProvider {
    PROVIDER.get_or_init(|| {
        SdkTracerProvider::builder()
            .with_batch_exporter(LateExporter)
            .build()
    })
}

/// The subscriber's OpenTelemetry layer (logging puts it in at once; it
/// records nothing until [`install`] found an endpoint).
pub(crate) fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider().tracer("serve-common"))
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|_| {
            ACTIVE.load(Ordering::Relaxed)
        }))
}

/// Reads `[telemetry]` from the global config and, with an endpoint,
/// starts exporting. Called by the main macro; idempotent.
pub fn install() -> Result<(), String> {
    static DONE: OnceCell<()> = OnceCell::new();
    DONE.get_or_try_init(|| {
        let settings: TelemetrySettings =
            crate::config::config().get_or("telemetry", TelemetrySettings::default());
        settings.validate()?;
        let Some(endpoint) = settings.otlp.endpoint else {
            return Ok(());
        };
        let endpoint = traces_url(&endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_millis(settings.otlp.timeout_ms))
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let name = settings
            .service_name
            .unwrap_or_else(crate::identity::app_name);
        *PENDING.lock() = Some((exporter, name.clone()));
        // The layer's tracer comes from this provider: make sure it exists.
        provider();
        ACTIVE.store(true, Ordering::Release);
        tracing::info!(%endpoint, service = %name, "exporting request spans over OTLP");
        Ok(())
    })
    .map(drop)
}

fn service_version() -> String {
    #[cfg(feature = "actix")]
    {
        crate::identity::version()
    }
    #[cfg(not(feature = "actix"))]
    {
        "unknown".to_owned()
    }
}

/// `endpoint` with `/v1/traces` when it has no path of its own.
fn traces_url(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    if rest.trim_end_matches('/').contains('/') {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// Whether request spans are exported.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Exports what is batched (up to 5 s) and stops exporting.
pub fn shutdown() {
    if !active() {
        return;
    }
    ACTIVE.store(false, Ordering::Release);
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(%error, "OpenTelemetry: not every span was exported at shutdown");
        }
    }
}

/// Makes the request's `span` continue `trace` (its caller's span as the
/// parent) and takes the exported span's ids into `trace`, so what
/// [`trace_context::current`](crate::trace_context::current) hands out
/// names the exported span.
pub(crate) fn link(span: &tracing::Span, trace: &mut TraceContext) {
    if !active() {
        return;
    }
    if let Some(parent) = trace.parent_span_id {
        let state = trace
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<opentelemetry::trace::TraceState>().ok())
            .unwrap_or_default();
        let remote = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(trace.trace_id.0),
            opentelemetry::trace::SpanId::from_bytes(parent.0),
            opentelemetry::trace::TraceFlags::new(trace.flags),
            true,
            state,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let exported = context.span().span_context().clone();
    if exported.is_valid() {
        trace.trace_id = TraceId(exported.trace_id().to_bytes());
        trace.span_id = SpanId(exported.span_id().to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_endpoint() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/custom/traces"),
            "https://c/custom/traces"
        );
    }
}
