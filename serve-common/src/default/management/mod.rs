//! The management endpoints (the Python original's `default.management`; feature
//! `actix`, on by default), mounted by
//! [`default::actix`](crate::default::actix) and listed in the OpenAPI
//! document under the tag `management`:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/`, `/manage/spec` | the OpenAPI document (JSON) |
//! | GET | `/manage/version` | the version, as text ([`set_version`]) |
//! | GET | `/manage/health` | `{"status", "pid", "level", "version", "checks"}`: every check, with its kind and duration; 503 when one fails ([`add_health_check`], [`health_check`]) |
//! | GET | `/manage/health/live` | liveness: 200 while the event dispatcher answers a ping (within 1 s) and the liveness checks pass, else 503 |
//! | GET | `/manage/health/ready` | readiness: 200 once the service listens, while no graceful stop has begun and the readiness checks pass, else 503 (`"status": "starting"`, `"stopping"` or `"failing"`) |
//! | GET | `/manage/logging/level` | `{"level": "INFO"}`: the level logging really uses |
//! | POST | `/manage/logging/level` | `{"level": "DEBUG"}`: validated, then config `logging.level` is set, so every process follows; `{"level": null}` drops that runtime level (back to the file's) |
//! | GET | `/manage/logging/targets` | `{"targets": {"my_app::db": "DEBUG"}}` |
//! | POST | `/manage/logging/targets` | `{"target": "my_app::db", "level": "DEBUG"}`; `"level": null` drops it |
//! | GET | `/manage/docs` | the API docs page (Swagger UI, served from this binary: no internet needed) |
//! | GET | `/manage/metrics` | the service's metrics, Prometheus text format; with worker processes, the whole service's (see [`crate::metrics`]; feature `metrics`) |
//!
//! A bad body (invalid JSON, a missing field, a wrong type, an unknown
//! level) is a 400 with an [`ErrorBody`](crate::default::errors::ErrorBody)
//! and changes nothing (a body over the size limit is a 413, also with a
//! JSON body).
//!
//! # Who reaches them
//!
//! On a loopback address (the default `server.bind`, `127.0.0.1:8000`)
//! every endpoint answers anyone, as on a developer's machine. Off
//! loopback, the config section `[management]` decides, the way Spring
//! Boot Actuator's `management.*` does:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `management.bind` | none | a listener of their own for the management endpoints (and the docs page), such as `"127.0.0.1:9000"`; the public listener then answers 404 for `/manage/*` (as for an unknown route) except what `public` names, and `/` is the OpenAPI document only if `public` names `spec` (else it is yours, or 404, on both listeners). With `server.processes = N` the supervisor binds it once and every worker serves it, like the main socket, so a level change made there reaches every process as before |
//! | `management.expose` | all | the endpoints served: `health`, `version`, `spec` (`/` and `/manage/spec`), `docs` (needs `spec`), `logging` (both level endpoints), `metrics` (also off with `metrics.enabled = false`); the others are 404 and leave the OpenAPI document. An unknown name is a start-up error listing the known ones |
//! | `management.public` | `[]` | with `bind`: the exposed endpoints the public listener serves too, such as `["health"]` for a load balancer |
//! | `management.token` | none | the bearer token of changes: every POST (any method but GET, HEAD and OPTIONS) needs `Authorization: Bearer <token>`, on every listener; none is 401 (with `WWW-Authenticate`), a wrong one 403, both JSON. Compared in constant time (SHA-256 digests); redacted in config log lines |
//! | `management.token_file` | none | a file holding the token instead (white space around it ignored; relative to the working directory), so the secret need not sit in `config.toml`: read at start, and again when it changes (a rotated secret applies at the next request). An unreadable or empty file is a start-up error |
//! | `management.token_for_reads` | `false` | reads need the token too (health included: give a load balancer the token, or leave this off) |
//!
//! Secure by default: when the public listener is not on a loopback
//! address (`0.0.0.0:8000`, say) and neither `bind` nor a token is set,
//! changes are refused with a 403 that names both ways to allow them, and
//! a WARN at start-up says so; reads (health above all) stay open. On the
//! listener of `bind`, changes need a token only when one is set (it is
//! the operators' listener: a WARN at start-up when it is not on loopback
//! and there is no token). Each refused request is logged at WARN with
//! the peer's address (the connection's: behind a proxy, the proxy's), at
//! most 5 every 10 s, the next line counting those left out; the token
//! is never logged. When a token is set, the OpenAPI document carries a
//! bearer scheme (`managementToken`) on the operations that need it (the
//! document is rendered when a process starts: it shows the settings of
//! then).
//!
//! The section is typed: a wrong key or value is a start-up error, and an
//! edit with one is refused (the old settings stay). `bind`, `expose` and
//! `public` are read when a process starts (a worker the supervisor
//! restarts later reads them as the config is then: restart the service
//! after editing them); the token follows every change. Paths are judged
//! as the router matches them (percent-decoded). Routes you add under
//! `/manage/` are management routes too: served on the management
//! listener, their changes guarded by the token.

use std::collections::BTreeMap;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use apistos::paths::Response;
use apistos::reference_or::ReferenceOr;
use apistos::web::{get, post, resource, ServiceConfig};
use apistos::{api_operation, ApiComponent, ApiErrorComponent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::default::errors::ApiError;
use crate::default::logging::{self, LoggingError};
use crate::event;

mod access;
pub(crate) mod probes;

pub use access::ManagementSettings;
pub(crate) use access::{warn_at_start, Endpoint, Gate, ManagementGate, Verdict};
pub use probes::{
    health_check, mark_ready, mark_stopping, phase, CheckKind, HealthCheckBuilder, Phase,
    DEFAULT_CHECK_TIMEOUT,
};

/// The tag of every management operation in the OpenAPI document.
pub const TAG: &str = "management";

type Details = serde_json::Map<String, serde_json::Value>;

/// Sets the version `/manage/version` answers (the Python original's assignment to
/// `management.version`). Without it: the application crate's
/// `CARGO_PKG_VERSION` when `#[serve_common::main]` is used, else `unknown`.
pub fn set_version(version: impl Into<String>) {
    crate::identity::set_version(version.into());
}

/// The version `/manage/version` answers.
pub fn version() -> String {
    crate::identity::version()
}

/// Adds (or replaces, by name) a readiness check that `/manage/health`
/// and `/manage/health/ready` run on every request: `Ok(())` is healthy,
/// `Err(reason)` makes the answer a 503 that names the check and the
/// reason. Checks run at once, on tokio's blocking pool; one that takes
/// longer than [`DEFAULT_CHECK_TIMEOUT`] is reported as failing (see
/// [`health_check`] for liveness checks and other timeouts). Keep them
/// quick anyway (read a flag a background task maintains).
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use serve_common::default::management;
///
/// static DB_UP: AtomicBool = AtomicBool::new(true);
/// management::add_health_check("database", || {
///     if DB_UP.load(Ordering::Relaxed) { Ok(()) } else { Err("no connection".into()) }
/// });
/// ```
pub fn add_health_check<F>(name: impl Into<String>, check: F)
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    health_check(name).register(check);
}

/// [`add_health_check`], with `details`: what the check reports beside
/// its result, passing or not (a connection's state, a lag...), as the
/// check's `details` object in `/manage/health`.
///
/// ```
/// use serve_common::default::management;
///
/// management::add_health_check_with_details(
///     "queue",
///     || Ok(()),
///     || {
///         let mut details = serde_json::Map::new();
///         details.insert("waiting".into(), 3.into());
///         details
///     },
/// );
/// ```
pub fn add_health_check_with_details<F, D>(name: impl Into<String>, check: F, details: D)
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
    D: Fn() -> serde_json::Map<String, serde_json::Value> + Send + Sync + 'static,
{
    health_check(name).details(details).register(check);
}

/// Removes the check named `name`; true if there was one.
pub fn remove_health_check(name: &str) -> bool {
    probes::remove(name)
}

/// The management routes the gate's `expose` asks for, for
/// [`default::actix`](crate::default::actix)'s app.
pub(crate) fn routes(config: &mut ServiceConfig<'_>, gate: &Gate) {
    let expose = gate.exposed();
    if gate.serves_root() {
        config.service(resource("/").route(get().to(root_spec)));
    }
    if expose.contains(Endpoint::Spec) {
        config.service(resource("/manage/spec").route(get().to(spec)));
    }
    if expose.contains(Endpoint::Version) {
        config.service(resource("/manage/version").route(get().to(get_version)));
    }
    if expose.contains(Endpoint::Health) {
        config
            .service(resource("/manage/health").route(get().to(health)))
            .service(resource("/manage/health/live").route(get().to(live)))
            .service(resource("/manage/health/ready").route(get().to(ready)));
    }
    if expose.contains(Endpoint::Logging) {
        config
            .service(
                resource("/manage/logging/level")
                    .route(get().to(get_level))
                    .route(post().to(post_level)),
            )
            .service(
                resource("/manage/logging/targets")
                    .route(get().to(get_targets))
                    .route(post().to(post_target)),
            );
    }
    #[cfg(feature = "metrics")]
    if expose.contains(Endpoint::Metrics) && crate::metrics::settings().enabled {
        config.service(resource("/manage/metrics").route(get().to(get_metrics)));
    }
    if expose.contains(Endpoint::Docs) {
        config.service(resource("/manage/docs").route(get().to(docs)));
    }
}

/// The name of the bearer scheme in the OpenAPI document.
const SECURITY_SCHEME: &str = "managementToken";

/// Marks in the rendered OpenAPI document the management operations that
/// need the token (as the config says when the document is rendered, at
/// start): the bearer scheme, and their 401 and 403 answers.
/// What the document cannot learn from the handlers' types: `GET
/// /manage/version` answers `text/plain` (a `String` is documented as JSON).
pub(crate) fn document_content_types(spec: &mut serde_json::Value) {
    use serde_json::json;
    #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
    let mut answers = vec![
        (
            "/paths/~1manage~1version/get/responses",
            json!({ "200": { "description": "The version", "content": { "text/plain; charset=utf-8": { "schema": { "type": "string" } } } } }),
        ),
        (
            "/paths/~1manage~1spec/get/responses",
            json!({ "200": { "description": "The OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }),
        ),
        (
            "/paths/~1/get/responses",
            json!({ "200": { "description": "The OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }),
        ),
        (
            "/paths/~1manage~1docs/get/responses",
            json!({ "308": {
                "description": "The docs page is at /manage/docs/",
                "headers": { "Location": { "schema": { "type": "string" } } }
            } }),
        ),
    ];
    #[cfg(feature = "metrics")]
    answers.push((
        "/paths/~1manage~1metrics/get/responses",
        json!({ "200": { "description": "The metrics", "content": { (crate::metrics::CONTENT_TYPE): { "schema": { "type": "string" } } } } }),
    ));
    // Each answer replaces its status only: the other passes' (401/403
    // with a token, 503 with a request timeout) stay.
    for (pointer, answers) in answers {
        let Some(serde_json::Value::Object(documented)) = spec.pointer_mut(pointer) else {
            continue;
        };
        if answers.get("308").is_some() {
            // A redirect, not a 200.
            documented.remove("200");
        }
        if let serde_json::Value::Object(answers) = answers {
            documented.extend(answers);
        }
    }
}

pub(crate) fn document_security(spec: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let Ok(section) = ManagementSettings::live() else {
        return;
    };
    let settings = section.get();
    if !settings.has_token() {
        return;
    }
    let Some(root) = spec.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(paths)) = root.get_mut("paths") {
        for (path, item) in paths.iter_mut() {
            if path != "/" && !path.starts_with("/manage/") {
                continue;
            }
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let reads = matches!(method.as_str(), "get" | "head" | "options");
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                if reads && !settings.token_for_reads {
                    continue;
                }
                operation.insert("security".to_owned(), json!([{ SECURITY_SCHEME: [] }]));
                if let Some(Value::Object(responses)) = operation.get_mut("responses") {
                    for (code, description) in
                        [(401, "No bearer token"), (403, "Not the management token")]
                    {
                        let (code, response) =
                            crate::default::errors::documented(code, description);
                        if let Ok(response) = serde_json::to_value(response) {
                            responses.insert(code, response);
                        }
                    }
                }
            }
        }
    }
    let components = root.entry("components").or_insert_with(|| json!({}));
    if let Some(components) = components.as_object_mut() {
        let schemes = components
            .entry("securitySchemes")
            .or_insert_with(|| json!({}));
        if let Some(schemes) = schemes.as_object_mut() {
            schemes.insert(
                SECURITY_SCHEME.to_owned(),
                json!({
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of config `management.token` (or `management.token_file`)"
                }),
            );
        }
    }
}

fn spec_response(state: &ServiceState) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.spec_json.clone())
}

/// The OpenAPI document of every route.
#[api_operation(
    operation_id = "manage_root_spec",
    tag = "management",
    summary = "The OpenAPI document (same as /manage/spec)"
)]
async fn root_spec(request: HttpRequest, state: web::Data<ServiceState>) -> HttpResponse {
    // `/` is not under `/manage/`: the gate's rules apply here.
    match state.gate.judge(&request, Some(Endpoint::Spec)) {
        Verdict::Pass => spec_response(&state),
        Verdict::NotFound => access::not_found(&request),
        Verdict::Refused(response) => response,
    }
}

/// The OpenAPI document of every route.
#[api_operation(
    operation_id = "manage_spec",
    tag = "management",
    summary = "The OpenAPI document"
)]
async fn spec(state: web::Data<ServiceState>) -> HttpResponse {
    spec_response(&state)
}

/// The service's version, as text.
#[api_operation(
    operation_id = "manage_get_version",
    tag = "management",
    summary = "The version string"
)]
async fn get_version() -> String {
    version()
}

/// The service's metrics in the Prometheus text format (version 0.0.4):
/// with worker processes, summed across them (gauges per process, by
/// `pid`).
#[cfg(feature = "metrics")]
#[api_operation(
    operation_id = "manage_get_metrics",
    tag = "management",
    summary = "Metrics, Prometheus text format (the whole service's)"
)]
async fn get_metrics() -> HttpResponse {
    let text = crate::metrics::render_service().await;
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}

/// The API docs page lives under `/manage/docs/`.
#[api_operation(
    operation_id = "manage_docs",
    tag = "management",
    summary = "The API docs page (HTML)"
)]
async fn docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/manage/docs/"))
        .finish()
}

/// One health check's result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct CheckResult {
    /// Whether the check passed.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the check reports beside its result (see
    /// [`add_health_check_with_details`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<BTreeMap<String, serde_json::Value>>,
    /// The probe it answers to.
    #[serde(default)]
    pub kind: CheckKind,
    /// How long it ran (or was waited for), in milliseconds.
    #[serde(default)]
    pub duration_ms: f64,
}

/// The body of `/manage/health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct Health {
    /// `ok` or `failing`.
    pub status: String,
    /// The answering process's pid (with worker processes, each answers for itself).
    pub pid: u32,
    /// The logging level this process uses.
    pub level: String,
    /// The version string.
    pub version: String,
    /// Each registered check by name.
    pub checks: BTreeMap<String, CheckResult>,
    /// The HTTP settings this process serves with (`[server]`, as read when
    /// it started serving).
    #[serde(default)]
    pub http: HttpSettings,
}

/// The HTTP settings of [`Health::http`], every `[server]` key of the
/// request path as the process uses it (defaults filled in): none of them
/// is secret, so all are shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct HttpSettings {
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `server.request_timeout` in milliseconds, if any.
    pub request_timeout_ms: Option<u64>,
    /// `server.compress`.
    pub compress: bool,
    /// `server.compress_min_bytes`.
    pub compress_min_bytes: usize,
    /// `server.client_request_timeout` in milliseconds (`0`: none).
    pub client_request_timeout_ms: u64,
    /// `server.client_disconnect_timeout` in milliseconds.
    pub client_disconnect_timeout_ms: u64,
    /// `server.keep_alive` in milliseconds (`0`: connections close after
    /// each response).
    pub keep_alive_ms: u64,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<String>,
    /// `server.forwarded_header`: the header read from trusted proxies.
    pub forwarded_header: String,
    /// `server.cors.allowed_origins` (empty: no CORS).
    pub cors_allowed_origins: Vec<String>,
    /// `server.cors.allowed_methods` (none: any).
    pub cors_allowed_methods: Option<Vec<String>>,
    /// `server.cors.allowed_headers` (none: any).
    pub cors_allowed_headers: Option<Vec<String>>,
    /// `server.cors.expose_headers` (none: `X-Request-Id`).
    pub cors_expose_headers: Option<Vec<String>>,
    /// `server.cors.supports_credentials`.
    pub cors_supports_credentials: bool,
    /// `server.cors.max_age`, seconds.
    pub cors_max_age: Option<usize>,
}

/// What the app's handlers share: the rendered OpenAPI document, the
/// management endpoints' rules, the HTTP settings in use.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(crate) spec_json: actix_web::web::Bytes,
    pub(crate) gate: std::sync::Arc<Gate>,
    pub(crate) http: HttpSettings,
}

impl ServiceState {
    pub(crate) fn new(
        spec: &serde_json::Value,
        gate: std::sync::Arc<Gate>,
        http: HttpSettings,
    ) -> Self {
        Self {
            spec_json: actix_web::web::Bytes::from(serde_json::to_vec(spec).unwrap_or_default()),
            gate,
            http,
        }
    }
}

/// A failing report (a [`Health`] or a [`Probe`]): a 503 whose body is
/// the report, documented as such.
#[derive(Debug)]
struct Unavailable<T>(T);

impl<T> std::fmt::Display for Unavailable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a health check failed")
    }
}

impl<T: Serialize + std::fmt::Debug> ResponseError for Unavailable<T> {
    fn status_code(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::ServiceUnavailable().json(&self.0)
    }
}

impl<T: ApiComponent> ApiErrorComponent for Unavailable<T> {
    fn schemas_by_status_code() -> BTreeMap<String, (String, ReferenceOr<apistos::Schema>)> {
        <T as ApiComponent>::schema()
            .map(|schema| BTreeMap::from([("503".to_owned(), schema)]))
            .unwrap_or_default()
    }

    fn error_responses() -> Vec<(String, Response)> {
        let mut response = crate::default::errors::documented(503, "A check failed");
        if let Some((name, _)) = <T as ApiComponent>::schema() {
            for media in response.1.content.values_mut() {
                media.schema = Some(ReferenceOr::Reference {
                    _ref: format!("#/components/schemas/{name}"),
                });
            }
        }
        vec![response]
    }
}

/// Runs every registered check; 503 when one fails.
#[api_operation(
    operation_id = "manage_health",
    tag = "management",
    summary = "Health: per-check results and the answering process"
)]
async fn health(state: web::Data<ServiceState>) -> Result<web::Json<Health>, Unavailable<Health>> {
    let results = probes::run_checks(None).await;
    let healthy = results.values().all(|r| r.ok);
    let report = Health {
        status: if healthy { "ok" } else { "failing" }.to_owned(),
        pid: std::process::id(),
        level: logging::level(),
        version: version(),
        checks: results,
        http: state.http.clone(),
    };
    if healthy {
        Ok(web::Json(report))
    } else {
        Err(Unavailable(report))
    }
}

/// The body of `/manage/health/live` and `/manage/health/ready`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct Probe {
    /// `ok`, or why not: `failing` (a check), `starting`, `stopping`.
    pub status: String,
    /// The answering process's pid.
    pub pid: u32,
    /// Where the process is in its life.
    pub phase: Phase,
    /// The probe's checks by name (live: the event dispatcher's ping too,
    /// as `event_dispatcher`).
    pub checks: BTreeMap<String, CheckResult>,
}

fn probe(
    status: &str,
    checks: BTreeMap<String, CheckResult>,
) -> Result<web::Json<Probe>, Unavailable<Probe>> {
    let probe = Probe {
        status: status.to_owned(),
        pid: std::process::id(),
        phase: phase(),
        checks,
    };
    if status == "ok" {
        Ok(web::Json(probe))
    } else {
        Err(Unavailable(probe))
    }
}

/// Liveness: the event dispatcher answers a ping (within a second) and
/// every liveness check passes; 503 otherwise. It stays 200 while the
/// process starts and stops.
#[api_operation(
    operation_id = "manage_live",
    tag = "management",
    summary = "Liveness: the process works (its event dispatcher answers, liveness checks pass)"
)]
async fn live() -> Result<web::Json<Probe>, Unavailable<Probe>> {
    let started = std::time::Instant::now();
    let ping = probes::ping_dispatcher().await;
    let ping = CheckResult {
        ok: ping.is_ok(),
        error: ping.err(),
        details: None,
        kind: CheckKind::Liveness,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    let mut checks = probes::run_checks(Some(CheckKind::Liveness)).await;
    checks.insert("event_dispatcher".to_owned(), ping);
    let status = if checks.values().all(|c| c.ok) {
        "ok"
    } else {
        "failing"
    };
    probe(status, checks)
}

/// Readiness: start-up is over, no graceful stop has begun, and every
/// readiness check passes; 503 otherwise (a load balancer sends traffic
/// elsewhere).
#[api_operation(
    operation_id = "manage_ready",
    tag = "management",
    summary = "Readiness: the process should get traffic (started, not stopping, readiness checks pass)"
)]
async fn ready() -> Result<web::Json<Probe>, Unavailable<Probe>> {
    let checks = probes::run_checks(Some(CheckKind::Readiness)).await;
    let status = match phase() {
        Phase::Starting => "starting",
        Phase::Stopping => "stopping",
        Phase::Ready if checks.values().all(|c| c.ok) => "ok",
        Phase::Ready => "failing",
    };
    probe(status, checks)
}

/// A logging level, as the endpoints read and write it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct LevelBody {
    /// TRACE, DEBUG, INFO, SUCCESS, WARNING (WARN), ERROR, CRITICAL or OFF, any case.
    pub level: String,
}

/// A level to set, or `null` to drop the level set at run time (every
/// process falls back to the config file's `logging.level`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct LevelChange {
    /// TRACE, DEBUG, INFO, SUCCESS, WARNING (WARN), ERROR, CRITICAL or OFF,
    /// any case; `null` resets to the file's level.
    #[serde(deserialize_with = "present")]
    #[validate(required)]
    #[schemars(schema_with = "nullable_level")]
    pub level: Option<String>,
}

/// The level names the endpoints take (any case is accepted; the document
/// lists them in capitals).
const LEVEL_NAMES: [&str; 9] = [
    "TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "WARN", "ERROR", "CRITICAL", "OFF",
];

/// A level name, or `null` (OpenAPI 3.0's `nullable`): an enum, so that a
/// client generated from the document sends only names the service takes.
fn nullable_level(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    let mut schema = schemars::schema::SchemaObject {
        instance_type: Some(schemars::schema::InstanceType::String.into()),
        enum_values: Some(
            LEVEL_NAMES
                .iter()
                .map(|name| serde_json::Value::String((*name).to_owned()))
                .chain([serde_json::Value::Null])
                .collect(),
        ),
        ..Default::default()
    };
    schema
        .extensions
        .insert("nullable".to_owned(), serde_json::Value::Bool(true));
    schema.into()
}

/// An `Option` that must be written, if only as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Per-target levels.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct TargetsBody {
    /// Level by target (a module path such as `my_app::db`).
    pub targets: BTreeMap<String, String>,
}

/// One target's level to set, or `null` to drop the one set at run time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct TargetLevel {
    /// A module path such as `my_app::db`.
    #[schemars(length(min = 1))]
    pub target: String,
    /// The level for it; `null` resets it to the config file's.
    #[serde(deserialize_with = "present")]
    #[validate(required)]
    #[schemars(schema_with = "nullable_level")]
    pub level: Option<String>,
}

fn logging_error(error: LoggingError) -> ApiError {
    match error {
        LoggingError::Level(error) => ApiError::bad_request(error.to_string()),
        other => ApiError::internal(format!("cannot change the logging level: {other}")),
    }
}

/// Waits (briefly, off the worker thread) until this process's handlers
/// have seen the config change, so the answer is what logging now uses.
async fn settle() {
    let _ = web::block(|| event::bus().flush(Duration::from_secs(2))).await;
}

/// The level logging uses in this process (once the config changes
/// already notified here have been applied).
#[api_operation(
    operation_id = "manage_get_level",
    tag = "management",
    summary = "The logging level in use"
)]
async fn get_level() -> web::Json<LevelBody> {
    settle().await;
    web::Json(LevelBody {
        level: logging::level(),
    })
}

/// Validates the level, then sets config `logging.level` (every process
/// follows); `{"level": null}` drops the runtime level, so every process
/// uses the config file's again.
#[api_operation(
    operation_id = "manage_post_level",
    // The level refused; a change refused off loopback without a token;
    // a token that cannot be checked.
    error_code = 400,
    error_code = 403,
    error_code = 503,
    tag = "management",
    summary = "Change the logging level of every process (null: back to the file's)"
)]
async fn post_level(body: web::Json<LevelChange>) -> Result<web::Json<LevelBody>, ApiError> {
    match &body.level {
        Some(level) => logging::set_level(level),
        None => logging::reset_level(),
    }
    .map_err(logging_error)?;
    settle().await;
    Ok(web::Json(LevelBody {
        level: logging::level(),
    }))
}

/// The per-target levels in use.
#[api_operation(
    operation_id = "manage_get_targets",
    tag = "management",
    summary = "The per-target logging levels"
)]
async fn get_targets() -> web::Json<TargetsBody> {
    settle().await;
    web::Json(TargetsBody {
        targets: logging::targets(),
    })
}

/// Validates, then sets config `logging.targets."<target>"` (every process
/// follows); a `null` level drops the runtime one for that target.
#[api_operation(
    operation_id = "manage_post_target",
    // The level refused; a change refused off loopback without a token;
    // a token that cannot be checked.
    error_code = 400,
    error_code = 403,
    error_code = 503,
    tag = "management",
    summary = "Change one target's logging level in every process (null: back to the file's)"
)]
async fn post_target(body: web::Json<TargetLevel>) -> Result<web::Json<TargetsBody>, ApiError> {
    match &body.level {
        Some(level) => logging::set_target_level(&body.target, level),
        None => logging::reset_target_level(&body.target),
    }
    .map_err(logging_error)?;
    settle().await;
    Ok(web::Json(TargetsBody {
        targets: logging::targets(),
    }))
}
