//! The web service (the Python original's `default.falcon`), on actix-web and apistos.
//! Needs the `actix` feature (on by default).
//!
//! One call builds the app: request ids ([`RequestIdMiddleware`]), the
//! request timer ([`RequestTimer`]), your routes, the
//! [management endpoints](crate::default::management), JSON bodies for
//! every client error, and the OpenAPI document of all routes.
//!
//! ```no_run
//! use serve_common::prelude::*;
//! use serve_common::default::actix::{self, web, ApiError};
//!
//! #[derive(Serialize, JsonSchema, ApiComponent)]
//! struct Greeting {
//!     message: String,
//! }
//!
//! #[api_operation(summary = "Greet someone")]
//! async fn hello(name: web::Path<String>) -> Result<web::Json<Greeting>, ApiError> {
//!     Ok(web::Json(Greeting { message: format!("hello, {name}") }))
//! }
//!
//! #[serve_common::main]
//! async fn main() -> std::io::Result<()> {
//!     actix::serve(|app| app.service(actix::resource("/hello/{name}").route(actix::get().to(hello))))
//!         .await
//! }
//! ```
//!
//! [`serve`] reads the `[server]` config section:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `server.bind` | `"127.0.0.1:8000"` | the address to listen on |
//! | `server.workers` | one per CPU | worker threads per process |
//! | `server.processes` | `1` | worker processes (see below; which of them run event handlers: [here](crate::event#which-processes-run-handlers)). Memory is per process: a counter or a map in a handler's state exists once per worker (two workers each hand out id 1), so keep shared state in a database, or send it between processes with [events](crate::event) |
//! | `server.shutdown_timeout` | `30` | seconds in-flight requests get after SIGTERM/SIGINT |
//! | `server.drain_seconds` | `0` | seconds the service keeps serving after SIGTERM/SIGINT before it closes its listener, with `/manage/health/ready` answering 503 so a load balancer moves traffic away first (set it to the balancer's probe interval times its failure threshold) |
//! | `server.backlog` | `2048` | the listen backlog |
//! | `server.title` | the crate name | the OpenAPI document's title |
//! | `server.max_body_bytes` | `2097152` (2 MiB) | the largest request body a JSON, form, `Bytes` or `String` extractor reads; a larger one is answered 413 with a JSON body |
//! | `server.request_timeout` | none | seconds a request may take in the service (middleware and handler); past it the client gets a 503 JSON body and the handler's future is dropped, with a WARN line |
//! | `server.client_request_timeout` | `5` | seconds a client has to send a request's head (actix-web's `client_request_timeout`; `0` waits forever) |
//! | `server.client_disconnect_timeout` | `1` | seconds a closing connection gets to finish (actix-web's `client_disconnect_timeout`) |
//! | `server.keep_alive` | `5` | seconds an idle keep-alive connection stays open (`0`: close after each response) |
//!
//! | `server.compress` | `false` | compress responses (gzip, brotli or zstd, as the client's `Accept-Encoding` prefers); needs the `compress` feature |
//! | `server.compress_min_bytes` | `1024` | responses smaller than this are sent as they are |
//! | `server.trusted_proxies` | none | addresses or CIDR ranges (`["10.0.0.0/8", "127.0.0.1"]`) of the proxies in front of the service: from them, the client address of the request log line and span (`client`, `client.address`) is taken from the header they write, walked back from the nearest hop past every trusted one (an entry that is not an address ends the walk); from any other peer the header is ignored |
//! | `server.forwarded_header` | `"x-forwarded-for"` | the header the trusted proxies write: `"x-forwarded-for"` or `"forwarded"` (RFC 7239's `for=`); only that one is read, since a proxy passes the other through from the client |
//! | `[server.cors]` | none (no CORS headers) | which other origins' pages may call the service: `allowed_origins` (`["https://app.example.com"]`, or `["*"]`), `allowed_methods` and `allowed_headers` (default any), `expose_headers` (default `X-Request-Id`), `supports_credentials` (default `false`; not with `"*"`), `max_age` (seconds a preflight may be cached) |
//!
//! The HTTP limits, timeouts, compression and CORS are read when a process
//! starts serving.
//!
//! Who reaches the management endpoints (a listener of their own, which
//! of them are served, a token for changes, refused changes off a
//! loopback bind) is the `[management]` section's call: see [who reaches
//! them](crate::default::management#who-reaches-them).
//!
//! SIGTERM and SIGINT stop the service gracefully: readiness turns 503,
//! the service serves on for `server.drain_seconds`, then the listener closes,
//! in-flight requests finish (up to `server.shutdown_timeout`), then
//! `serve` returns and `#[serve_common::main]` flushes the logs. A second
//! signal stops at once.
//!
//! With `server.processes = N > 1`, the process that calls `serve` becomes a
//! supervisor, the gunicorn way: it binds the socket once and starts N
//! copies of its own executable (same arguments) that inherit it and
//! serve; it restarts a worker that exits (backing off, and giving up
//! with an error after 5 failed starts in a row), forwards SIGTERM/SIGINT
//! as SIGTERM, and returns once every worker has stopped (an error if it
//! had to kill them after the shutdown timeout). Workers share events and config
//! changes through IPC (so a level change answered by one reaches all).
//! Everything `main` does before `serve` runs in every worker too.
//!
//! The supervisor serves no requests, so it runs none of the application's
//! event handlers (`#[on_event]`, `register`): an event runs them once per
//! worker, not once more in the supervisor. It still follows config
//! changes and log levels, and it keeps the IPC server (restarting it if
//! it dies). See [which processes run
//! handlers](crate::event#which-processes-run-handlers).

pub(crate) mod client;
mod http;
mod limits;
mod routes;
mod workers;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::default::errors;
use crate::default::management::{
    Endpoint, Gate, HttpSettings, ManagementGate, ManagementSettings, ServiceState,
};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::Condition;
use apistos::app::{BuildConfig, OpenApiWrapper};
use apistos::info::Info;
use apistos::spec::Spec;
use apistos::tag::Tag;
use tracing::instrument::WithSubscriber;

pub use crate::default::errors::{ApiError, ErrorBody};
pub use http::{CorsSettings, DEFAULT_COMPRESS_MIN_BYTES};
pub use routes::{App, Documented, RoutesDone};
#[cfg(feature = "metrics")]
pub(crate) use workers::process_group;
pub(crate) use workers::{adopt_inherited_socket, will_supervise};

pub use crate::log_util::RequestTimer;
pub use crate::request_id::RequestIdMiddleware;

/// The request metrics' middleware (feature `metrics`), else none.
#[cfg(feature = "metrics")]
fn http_metrics() -> crate::metrics::http::HttpMetrics {
    crate::metrics::http::HttpMetrics
}
#[cfg(not(feature = "metrics"))]
fn http_metrics() -> actix_web::middleware::Identity {
    actix_web::middleware::Identity::default()
}

#[cfg(feature = "compress")]
fn compression(min: usize) -> http::Compression {
    http::Compression { min }
}
#[cfg(not(feature = "compress"))]
fn compression(_: usize) -> actix_web::middleware::Identity {
    actix_web::middleware::Identity::default()
}

/// actix-web itself, for what [`web`] does not cover.
pub use actix_web as actix_web_crate;
/// HTTP status codes, for [`ApiError::new`] and responses.
pub use actix_web::http::StatusCode;
/// actix-web's `web` module (extractors such as `web::Json`,
/// `web::Path`, `web::Data`), so a service needs no direct dependency.
pub use actix_web::web;
/// The route builders that document as they route: use these (not
/// `actix_web::web`'s) so a route lands in the OpenAPI document.
pub use apistos::web::{
    delete, get, head, patch, post, put, resource, scope, Resource, Route, Scope, ServiceConfig,
};
pub use apistos::{ApiComponent, ApiErrorComponent};

/// The JSON-schema derive the OpenAPI document needs on bodies.
pub use schemars::JsonSchema;
/// Documents a handler in the OpenAPI document: apistos' `api_operation`
/// (see its options: `summary`, `description`, `tag`, `error_code`,
/// `skip`, `deprecated`...), with the function's name as the operation id
/// unless `operation_id = ".."` says otherwise (apistos alone derives it
/// from the path and a hash, which is what client generators turn into
/// method names). Operation ids are unique in a document: two handlers of
/// the same name (or one function routed twice) are an error when the
/// service starts, naming both; give one an `operation_id`.
/// `crate = "path"` names serve-common under another name.
///
/// ```
/// use serve_common::default::actix::{api_operation, web, ApiError};
///
/// #[api_operation(summary = "Delete a note", error_code = 404)]
/// async fn delete_note(id: web::Path<u64>) -> Result<web::Json<u64>, ApiError> {
///     Err(ApiError::not_found(format!("no note {id}")))
/// }
/// ```
pub use serve_common_macros::api_operation;

const RENDER_PATH: &str = "/.serve-common/openapi.json";

/// `[server]` as this process reads it when it starts serving: the app's
/// HTTP settings, and what `/manage/health` shows of them.
fn server_settings() -> Arc<ServerSettings> {
    Arc::new(crate::config::config().get_or("server", ServerSettings::default()))
}

/// What the management handlers share, for the document `spec`.
fn service_state(
    spec: &serde_json::Value,
    gate: Arc<Gate>,
    server: &ServerSettings,
) -> Arc<ServiceState> {
    Arc::new(ServiceState::new(spec, gate, server.http_settings()))
}

/// The service: your routes plus everything [the module](self) lists.
/// [`serve`] is `service(routes).run()`.
#[derive(Clone, Debug)]
#[must_use = "nothing is served until `run`"]
pub struct Service<F> {
    configure: F,
    title: Option<String>,
    description: Option<String>,
}

/// Starts describing a service whose routes `configure` adds to the
/// [`App`] it is given.
pub fn service<F, R>(configure: F) -> Service<F>
where
    F: Fn(App) -> R + Clone + Send + 'static,
    R: RoutesDone + 'static,
{
    Service {
        configure,
        title: None,
        description: None,
    }
}

/// Serves `configure`'s routes with everything [the module](self) lists,
/// until SIGTERM or SIGINT. See [`Service::run`].
pub async fn serve<F, R>(configure: F) -> io::Result<()>
where
    F: Fn(App) -> R + Clone + Send + 'static,
    R: RoutesDone + 'static,
{
    service(configure).run().await
}

impl<F, R> Service<F>
where
    F: Fn(App) -> R + Clone + Send + 'static,
    R: RoutesDone + 'static,
{
    /// The OpenAPI document's title (default: config `server.title`, else
    /// the application's crate name).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The OpenAPI document's description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    fn spec(&self) -> Spec {
        let title = self.title.clone().unwrap_or_else(|| {
            crate::config::config().get_or("server.title", crate::identity::app_name())
        });
        Spec {
            info: Info {
                title,
                version: crate::identity::version(),
                description: self.description.clone(),
                ..Default::default()
            },
            tags: vec![Tag {
                name: crate::default::management::TAG.to_owned(),
                description: Some("Service management: spec, version, health, logging".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn build(
        &self,
        state: Arc<ServiceState>,
        server: Arc<ServerSettings>,
        render: bool,
    ) -> actix_web::App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        let configure = self.configure.clone();
        let gate = state.gate.clone();
        let expose = gate.exposed();
        let max_body = server.max_body_bytes();
        let timeout = server.request_timeout();
        client::trust(
            client::parse(server.trusted_proxies.as_deref().unwrap_or_default())
                .unwrap_or_default(),
            client::parse_header(server.forwarded_header.as_deref())
                .unwrap_or(client::ForwardedHeader::XForwardedFor),
        );
        let cors = server
            .cors
            .as_ref()
            .filter(|c| c.validate().is_ok())
            .map(CorsSettings::middleware);
        let compress = server.compress == Some(true);
        let compress_min = server
            .compress_min_bytes
            .unwrap_or(http::DEFAULT_COMPRESS_MIN_BYTES);
        let app = actix_web::App::new()
            .document(self.spec())
            .app_data(web::Data::from(state))
            .configure(move |config| errors::extractor_configs(config, max_body))
            .configure(move |config| {
                let app = App::default();
                let _ = configure(app.clone());
                app.apply(config);
            })
            .configure({
                let gate = gate.clone();
                move |config| crate::default::management::routes(config, &gate)
            })
            .default_service(web::to(errors::not_found))
            .wrap(Condition::new(
                timeout.is_some(),
                limits::RequestTimeout(timeout.unwrap_or_default()),
            ))
            .wrap(ManagementGate(gate))
            // Inside the JSON errors: a refused CORS request gets a JSON body.
            .wrap(Condition::new(
                cors.is_some(),
                http::CorsGate(cors.unwrap_or_default()),
            ))
            .wrap(errors::JsonErrors)
            .wrap(Condition::new(compress, compression(compress_min)))
            .wrap(RequestTimer)
            .wrap(http_metrics())
            .wrap(RequestIdMiddleware);
        let app = if render {
            app.build(RENDER_PATH)
        } else {
            app.build_with(RENDER_PATH, BuildConfig::default().disable_openapi_route())
        };
        app.configure(move |config| {
            if expose.contains(Endpoint::Docs) {
                config.service(swagger_ui_dist::generate_scope(
                    swagger_ui_dist::ApiDefinition {
                        uri_prefix: "/manage/docs",
                        api_definition: swagger_ui_dist::OpenApiSource::Uri("/manage/spec"),
                        title: Some("API docs"),
                    },
                ));
            }
        })
    }

    /// Renders the OpenAPI document of every route (yours and the
    /// management ones `management.expose` serves) as JSON.
    pub async fn openapi(&self) -> serde_json::Value {
        self.render(Arc::new(Gate::new(None)), server_settings())
            .await
    }

    /// The document of the app built with `server` (the settings the app
    /// serves with, so the document says what it does).
    async fn render(&self, gate: Arc<Gate>, server: Arc<ServerSettings>) -> serde_json::Value {
        let render = async {
            let state = service_state(&serde_json::Value::Null, gate, &server);
            let state_timeout = server.request_timeout().is_some();
            let app = actix_web::test::init_service(self.build(state, server.clone(), true)).await;
            let request = actix_web::test::TestRequest::get()
                .uri(RENDER_PATH)
                .to_request();
            let body = actix_web::test::call_and_read_body(&app, request).await;
            let mut spec = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            add_error_schemas(&mut spec);
            errors::document_framework_errors(&mut spec, state_timeout);
            crate::default::management::document_security(&mut spec);
            crate::default::management::document_content_types(&mut spec);
            spec
        };
        // The render's own request is no news: keep it out of the logs.
        render
            .with_subscriber(tracing::subscriber::NoSubscriber::default())
            .await
    }

    /// The app, ready for `HttpServer::new` or `actix_web::test::init_service`:
    /// one listener serving everything (`management.bind` is for
    /// [`run`](Self::run)); the other `[management]` rules apply.
    pub async fn app(
        &self,
    ) -> actix_web::App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        let gate = Arc::new(Gate::new(None));
        let server = server_settings();
        let spec = self.render(gate.clone(), server.clone()).await;
        self.build(service_state(&spec, gate, &server), server, false)
    }

    /// Binds (config `server.bind`) and serves until SIGTERM or SIGINT,
    /// then lets in-flight requests finish. With `server.processes > 1`
    /// this process supervises worker processes instead (see the
    /// [module docs](self)).
    pub async fn run(self) -> io::Result<()> {
        let settings = Settings::read();
        let management = ManagementSettings::live()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?
            .get();
        if let Some(listeners) = workers::inherited_listeners()? {
            return self.serve_on(listeners, &settings, stop_signals()?).await;
        }
        let bind = |address: &str, what: &str| {
            workers::bind(address, settings.backlog).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {address}{what}: {error}"),
                )
            })
        };
        let listeners = Listeners {
            public: bind(&settings.bind, "")?,
            management: match &management.bind {
                Some(address) => Some(bind(address, " (management.bind)")?),
                None => None,
            },
        };
        crate::default::management::warn_at_start(
            listeners.public.local_addr()?,
            listeners.management_address()?,
        );
        if settings.processes > 1 {
            crate::event::bus().become_supervisor();
            return workers::supervise(listeners, &settings).await;
        }
        self.serve_on(listeners, &settings, stop_signals()?).await
    }

    /// Serves `listeners` in this process (a [`crate::testing`] service:
    /// on loopback, with no signal handling) until `stop` says so.
    /// `serving` is told once the server runs.
    #[cfg(feature = "testing")]
    pub(crate) async fn serve_until(
        self,
        listeners: Listeners,
        stop: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
        serving: tokio::sync::oneshot::Sender<()>,
    ) -> io::Result<()> {
        let settings = Settings::read();
        self.serve_on(
            listeners,
            &settings,
            workers::StopSource::Channel(stop, Some(serving)),
        )
        .await
    }

    async fn serve_on(
        self,
        listeners: Listeners,
        settings: &Settings,
        mut stop: workers::StopSource,
    ) -> io::Result<()> {
        let management = listeners.management_address()?;
        let gate = Arc::new(Gate::new(management));
        let server = server_settings();
        let spec = self.render(gate.clone(), server.clone()).await;
        errors::operation_id_clashes(&spec)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let state = service_state(&spec, gate, &server);
        let address = listeners.public.local_addr()?;
        let http = server.clone();
        let this = self.clone();
        let mut server =
            actix_web::HttpServer::new(move || this.build(state.clone(), server.clone(), false))
                .disable_signals()
                .shutdown_timeout(settings.shutdown_timeout.as_secs());
        if let Ok(Some(timeout)) = seconds("", http.client_request_timeout) {
            server = server.client_request_timeout(timeout);
        }
        if let Ok(Some(timeout)) = seconds("", http.client_disconnect_timeout) {
            server = server.client_disconnect_timeout(timeout);
        }
        if let Ok(Some(keep_alive)) = seconds("", http.keep_alive) {
            server = server.keep_alive(if keep_alive.is_zero() {
                actix_web::http::KeepAlive::Disabled
            } else {
                actix_web::http::KeepAlive::Timeout(keep_alive)
            });
        }
        if let Some(workers) = settings.workers {
            server = server.workers(workers.max(1));
        }
        // One server, one app, both listeners: the gate tells them apart
        // by the listener a request came in on.
        server = server.listen(listeners.public)?;
        if let Some(listener) = listeners.management {
            server = server.listen(listener)?;
        }
        let server = server.run();
        tracing::info!("listening on http://{address} (pid {})", std::process::id());
        if let Some(management) = management {
            tracing::info!(
                "management endpoints on http://{management} (pid {})",
                std::process::id()
            );
        }
        crate::default::management::mark_ready();
        stop.serving();
        let handle = server.handle();
        let drain = settings.drain;
        actix_web::rt::spawn(async move {
            let signal = stop.recv().await;
            crate::default::management::mark_stopping();
            if !drain.is_zero() {
                tracing::info!(
                    "{signal} received: readiness is 503; still serving for {} s (server.drain_seconds)",
                    drain.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(drain) => {}
                    signal = stop.recv() => {
                        tracing::warn!("{signal} received again: stopping at once");
                        handle.stop(false).await;
                        return;
                    }
                }
            }
            tracing::info!("{signal} received: finishing in-flight requests, then stopping");
            let graceful = actix_web::rt::spawn(handle.clone().stop(true));
            tokio::select! {
                _ = graceful => {}
                signal = stop.recv() => {
                    tracing::warn!("{signal} received again: stopping at once");
                    handle.stop(false).await;
                }
            }
        });
        server.await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// apistos lists an error type's schemas only for the status codes an
/// operation names; [`ApiError`]'s responses refer to [`ErrorBody`]
/// everywhere, so the document always carries it.
fn add_error_schemas(spec: &mut serde_json::Value) {
    let Some(root) = spec.as_object_mut() else {
        return;
    };
    let schemas = root
        .entry("components")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .map(|c| c.entry("schemas").or_insert_with(|| serde_json::json!({})));
    let Some(serde_json::Value::Object(schemas)) = schemas else {
        return;
    };
    let extra = [
        <ErrorBody as ApiComponent>::schema(),
        <crate::default::management::Health as ApiComponent>::schema(),
    ];
    for (name, schema) in extra.into_iter().flatten() {
        if let Ok(schema) = serde_json::to_value(schema) {
            schemas.entry(name).or_insert(schema);
        }
    }
}

/// The `[server]` config section as [`serve`] reads it; registered as a
/// typed [section](crate::config::Config::section) by
/// `#[serve_common::main]`, so an edit with a wrong type is refused like
/// invalid TOML. See the [module docs](self) for the keys.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ServerSettings {
    /// `server.bind`.
    pub bind: Option<String>,
    /// `server.workers`, at least 1.
    pub workers: Option<usize>,
    /// `server.processes`, at least 1.
    pub processes: Option<usize>,
    /// `server.backlog`.
    pub backlog: Option<i32>,
    /// `server.shutdown_timeout`, seconds.
    pub shutdown_timeout: Option<u64>,
    /// `server.drain_seconds`: after SIGTERM, how long to keep serving
    /// (readiness 503) before the listener closes.
    pub drain_seconds: Option<u64>,
    /// `server.title`.
    pub title: Option<String>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// `server.request_timeout`, seconds.
    pub request_timeout: Option<f64>,
    /// `server.client_request_timeout`, seconds.
    pub client_request_timeout: Option<f64>,
    /// `server.client_disconnect_timeout`, seconds.
    pub client_disconnect_timeout: Option<f64>,
    /// `server.keep_alive`, seconds.
    pub keep_alive: Option<f64>,
    /// `server.compress`.
    pub compress: Option<bool>,
    /// `server.compress_min_bytes`.
    pub compress_min_bytes: Option<usize>,
    /// `[server.cors]`.
    pub cors: Option<CorsSettings>,
    /// `server.trusted_proxies`: addresses or CIDR ranges.
    pub trusted_proxies: Option<Vec<String>>,
    /// `server.forwarded_header`: `"x-forwarded-for"` or `"forwarded"`.
    pub forwarded_header: Option<String>,
}

/// The default of `server.max_body_bytes`: 2 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// `seconds` as a duration, or the error naming `key`.
fn seconds(key: &str, seconds: Option<f64>) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|_| format!("`{key}` must be a number of seconds, 0 or more (got {s})")),
    }
}

impl ServerSettings {
    /// Whether `serve` can use these settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.workers == Some(0) {
            return Err("`workers` must be at least 1".to_owned());
        }
        if self.processes == Some(0) {
            return Err("`processes` must be at least 1".to_owned());
        }
        if self.max_body_bytes == Some(0) {
            return Err("`max_body_bytes` must be at least 1".to_owned());
        }
        if seconds("request_timeout", self.request_timeout)?.is_some_and(|d| d.is_zero()) {
            return Err(
                "`request_timeout` must be more than 0 seconds (leave it out for none)".to_owned(),
            );
        }
        seconds("client_request_timeout", self.client_request_timeout)?;
        seconds("client_disconnect_timeout", self.client_disconnect_timeout)?;
        seconds("keep_alive", self.keep_alive)?;
        if self.compress == Some(true) && !cfg!(feature = "compress") {
            return Err(
                "`compress = true` needs serve-common's `compress` feature (features = [\"compress\"] in Cargo.toml)"
                    .to_owned(),
            );
        }
        if let Some(cors) = &self.cors {
            cors.validate()?;
        }
        client::parse(self.trusted_proxies.as_deref().unwrap_or_default())?;
        client::parse_header(self.forwarded_header.as_deref())?;
        Ok(())
    }

    /// What these settings make the service use, as `/manage/health`
    /// shows it.
    pub fn http_settings(&self) -> HttpSettings {
        /// Seconds (or the default) in milliseconds.
        fn millis(seconds: Option<f64>, default: f64) -> u64 {
            let ms = (seconds.unwrap_or(default) * 1000.0).round();
            if ms.is_finite() && ms >= 0.0 {
                // In range: checked above, and u64::MAX ms is 584 million years.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let ms = ms.min(u64::MAX as f64) as u64;
                ms
            } else {
                0
            }
        }
        let cors = self.cors.as_ref();
        HttpSettings {
            max_body_bytes: self.max_body_bytes(),
            request_timeout_ms: self
                .request_timeout()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            compress: self.compress == Some(true),
            compress_min_bytes: self
                .compress_min_bytes
                .unwrap_or(DEFAULT_COMPRESS_MIN_BYTES),
            client_request_timeout_ms: millis(self.client_request_timeout, 5.0),
            client_disconnect_timeout_ms: millis(self.client_disconnect_timeout, 1.0),
            keep_alive_ms: millis(self.keep_alive, 5.0),
            trusted_proxies: self.trusted_proxies.clone().unwrap_or_default(),
            forwarded_header: self
                .forwarded_header
                .clone()
                .unwrap_or_else(|| "x-forwarded-for".to_owned()),
            cors_allowed_origins: cors.map(|c| c.allowed_origins.clone()).unwrap_or_default(),
            cors_allowed_methods: cors.and_then(|c| c.allowed_methods.clone()),
            cors_allowed_headers: cors.and_then(|c| c.allowed_headers.clone()),
            cors_expose_headers: cors.and_then(|c| c.expose_headers.clone()),
            cors_supports_credentials: cors.is_some_and(|c| c.supports_credentials),
            cors_max_age: cors.and_then(|c| c.max_age),
        }
    }

    /// `server.max_body_bytes`, or its default.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    /// `server.request_timeout` (none when absent or invalid).
    pub fn request_timeout(&self) -> Option<Duration> {
        seconds("", self.request_timeout).ok().flatten()
    }

    /// Registers the section on `config`.
    pub fn register(
        config: &crate::config::Config,
    ) -> Result<crate::config::Section<Self>, crate::config::ConfigError> {
        use crate::config::section::fields_of;
        config.section_known("server", Self::validate, |parent| match parent {
            "" => fields_of::<Self>(),
            "cors" => fields_of::<CorsSettings>(),
            _ => &[],
        })
    }
}

/// The sockets a service listens on.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// `server.bind`'s.
    pub(crate) public: std::net::TcpListener,
    /// `management.bind`'s.
    pub(crate) management: Option<std::net::TcpListener>,
}

impl Listeners {
    pub(crate) fn management_address(&self) -> io::Result<Option<std::net::SocketAddr>> {
        self.management
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()
    }
}

/// A [`crate::testing`] service's sockets: a free loopback port, and
/// `management.bind` if the config sets one (`127.0.0.1:0` for a free port).
#[cfg(feature = "testing")]
pub(crate) fn test_listeners() -> io::Result<Listeners> {
    let settings = Settings::read();
    let management = ManagementSettings::live()
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?
        .get();
    Ok(Listeners {
        public: workers::bind("127.0.0.1:0", settings.backlog)?,
        management: match &management.bind {
            Some(address) => Some(workers::bind(address, settings.backlog)?),
            None => None,
        },
    })
}

/// SIGTERM and SIGINT, caught from now on.
fn stop_signals() -> io::Result<workers::StopSource> {
    workers::StopSignals::new().map(workers::StopSource::Signals)
}

/// The `[server]` config section, with defaults.
#[derive(Debug, Clone)]
struct Settings {
    bind: String,
    workers: Option<usize>,
    processes: usize,
    backlog: i32,
    shutdown_timeout: Duration,
    drain: Duration,
}

impl Settings {
    /// The global config's.
    fn read() -> Self {
        let server: ServerSettings =
            crate::config::config().get_or("server", ServerSettings::default());
        Self {
            bind: server.bind.unwrap_or_else(|| "127.0.0.1:8000".to_owned()),
            workers: server.workers,
            processes: server.processes.unwrap_or(1),
            backlog: server.backlog.unwrap_or(2048),
            shutdown_timeout: Duration::from_secs(server.shutdown_timeout.unwrap_or(30)),
            drain: Duration::from_secs(server.drain_seconds.unwrap_or(0)),
        }
    }
}
