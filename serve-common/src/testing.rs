//! Testing your own service the way it runs in production (feature
//! `testing`, for `[dev-dependencies]`).
//!
//! [`TestService::start`] serves your routes (everything
//! [`actix::serve`](crate::default::actix::serve) adds included: request
//! ids, the JSON errors, the management endpoints, the `[server]`
//! settings) on a free loopback port, with a config written from TOML text
//! into a file, and hands back:
//!
//! - its base URL and an HTTP client ([`TestService::get`],
//!   [`post`](TestService::post)... with JSON helpers), built on actix's
//!   `awc`;
//! - the global [`Config`], and [`edit_config`](TestService::edit_config)
//!   to change the file and have the change applied (or its error
//!   returned), or [`write_config`](TestService::write_config) to leave the
//!   file watcher to find it, as in production;
//! - the log lines written while it runs ([`logs`](TestService::logs),
//!   [`wait_for_log`](TestService::wait_for_log)), with their fields and
//!   request ids ([`LogLine`]);
//! - waits with a timeout for an event ([`expect_event`]) or a config
//!   change ([`expect_config_change`]), so a test needs no sleeps;
//! - [`stop`](TestService::stop), which waits for the graceful shutdown.
//!
//! ```no_run
//! use serve_common::default::actix::{self, web, ApiError};
//! use serve_common::prelude::*;
//! use serve_common::testing::TestService;
//!
//! #[derive(Serialize, Deserialize, JsonSchema, ApiComponent)]
//! struct Greeting {
//!     message: String,
//! }
//!
//! #[api_operation(summary = "Greet someone")]
//! async fn hello(name: web::Path<String>) -> Result<web::Json<Greeting>, ApiError> {
//!     tracing::info!(%name, "greeting");
//!     Ok(web::Json(Greeting { message: format!("hello, {name}") }))
//! }
//!
//! fn routes(app: actix::App) -> actix::App {
//!     app.service(actix::resource("/hello/{name}").route(actix::get().to(hello)))
//! }
//!
//! #[actix_web::test] // or #[tokio::test]
//! async fn greets() {
//!     let service = TestService::start(actix::service(routes), "[logging]\nlevel = \"DEBUG\"\n")
//!         .await
//!         .unwrap();
//!     let greeting: Greeting = service.get_json("/hello/ann").await.unwrap();
//!     assert_eq!(greeting.message, "hello, ann");
//!     let response = service.get("/hello/bob").send().await.unwrap();
//!     let line = service
//!         .wait_for_log(|line| {
//!             line.message() == Some("greeting") && line.request_id() == response.request_id()
//!         })
//!         .await
//!         .unwrap();
//!     assert_eq!(line.field("name").and_then(|v| v.as_str()), Some("bob"));
//!     service.stop().await.unwrap();
//! }
//! # fn main() {}
//! ```
//!
//! # What is global per process
//!
//! A test binary is one process, and some of what a service uses exists
//! once per process: the [config](crate::config::config) (one file for the
//! whole binary), the [event bus](crate::event::bus) and the handlers
//! registered on it, logging (its subscriber and levels), the metrics
//! recorder (counters add up across services), the health checks added
//! with [`add_health_check`](crate::default::management::add_health_check).
//! So services take turns: tests run in parallel as usual, but while one
//! test's service runs, another test's [`start`](TestService::start)
//! waits until it is stopped or dropped. Each start gives a clean slate
//! where it can: the config file is replaced by the new TOML text and the
//! runtime sets of the previous service are forgotten, the log lines
//! returned are those written since the start, readiness begins at
//! "starting". Starting a second service in the same test while the
//! first runs is an error, not a wait forever.
//!
//! The config reads no environment variables (`SERVE_COMMON__...`), so a
//! developer's shell does not change a test's outcome; the service does
//! not join an IPC group nor NATS (`server.processes` is ignored: one
//! process serves), and binds `127.0.0.1` on a free port whatever
//! `server.bind` says (`management.bind`, when set, is bound as given:
//! `127.0.0.1:0` picks a free port, see
//! [`management_url`](TestService::management_url)). Log lines are
//! captured, not printed: a test that panics prints its service's lines
//! as it unwinds.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{self, Config, ConfigError};
use crate::default::actix::App;
use crate::default::actix::{RoutesDone, Service};
use crate::event::{self, Event, PatternError};

/// How long the waits of this module wait unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong in a test helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestError {
    /// The service could not start (its sockets, its runtime).
    #[error("the test service could not start: {0}")]
    Start(#[source] io::Error),
    /// The TOML text or the global config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not capture the lines (another subscriber is
    /// installed).
    #[error("the test service cannot capture logs: {0}")]
    Logging(String),
    /// A second service in the same test while the first runs.
    #[error(
        "this test already runs a TestService: stop it first (services take turns; see serve_common::testing)"
    )]
    AlreadyRunning,
    /// The request could not be sent or its answer read.
    #[error("{method} {url}: {message}")]
    Request {
        /// The request's method.
        method: Method,
        /// Its URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// A JSON helper got a status other than 2xx.
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        /// The request's method.
        method: Method,
        /// Its URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The body, as text.
        body: String,
    },
    /// A body is not the JSON expected.
    #[error("the body is not the JSON expected: {0}")]
    Json(#[from] serde_json::Error),
    /// Nothing came in time.
    #[error("{what}: nothing within {timeout:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The pattern of a wait does not compile.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The service stopped with an error.
    #[error("the test service stopped with an error: {0}")]
    Stopped(#[source] io::Error),
}

/// The turn: one service at a time per process.
static TURN: Lazy<Arc<tokio::sync::Mutex<()>>> = Lazy::new(Arc::default);
/// The thread of the test whose service holds the turn.
static HOLDER: Mutex<Option<ThreadId>> = Mutex::new(None);

/// What every test service of the process shares, set up once.
struct Process {
    /// The directory of the config file (kept until the process ends).
    dir: tempfile::TempDir,
    file: PathBuf,
    logs: Arc<LogBuffer>,
}

static PROCESS: once_cell::sync::OnceCell<Process> = once_cell::sync::OnceCell::new();

fn process() -> Result<&'static Process, TestError> {
    PROCESS.get_or_try_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("serve-common-test-")
            .tempdir()
            .map_err(TestError::Start)?;
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").map_err(TestError::Start)?;
        let global = config::init(
            Config::builder()
                .path(&file)
                .no_env()
                .follow_remote_sets(false)
                .watch(true),
        )?;
        crate::main_entry::register_sections(global)?;
        let logs = Arc::new(LogBuffer::default());
        crate::default::logging::add_output_writer_json(Capture(logs.clone()))
            .map_err(|error| TestError::Logging(error.to_string()))?;
        let _ = event::initialize();
        #[cfg(feature = "metrics")]
        crate::metrics::install();
        Ok(Process { dir, file, logs })
    })
}

/// A service serving in this process for a test; see the [module
/// docs](self). Dropping it stops the service at once (in-flight requests
/// are cut); [`stop`](Self::stop) stops it gracefully.
pub struct TestService {
    address: SocketAddr,
    management: Option<SocketAddr>,
    process: &'static Process,
    /// The first log line of this service.
    first_line: usize,
    done: Option<oneshot::Receiver<io::Result<()>>>,
    requests: mpsc::UnboundedSender<Job>,
    /// Dropped before the turn: the service has stopped when the next
    /// one starts.
    running: Running,
    _turn: Turn,
}

/// The turn of a test's service: clears [`HOLDER`], then lets the next
/// service start.
struct Turn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Before the guard (a field) unlocks: no other test's thread holds
        // the turn yet.
        *HOLDER.lock() = None;
    }
}

/// The service's thread: dropped, it closes the stop channel (the
/// service stops at once) and waits for the thread to end.
struct Running {
    stop: Option<mpsc::UnboundedSender<&'static str>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Waits for the thread; a panic in it is an error.
    fn join(&mut self) -> io::Result<()> {
        self.stop.take();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(io::Error::other(format!(
                    "the service's thread panicked: {what}"
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

impl fmt::Debug for TestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestService")
            .field("address", &self.address)
            .field("config", &self.process.file)
            .finish_non_exhaustive()
    }
}

impl TestService {
    /// Writes `config_toml` as the config file, then serves `service`'s
    /// routes on a free loopback port; returns once the port accepts
    /// connections. Waits for another test's service to stop first (see
    /// [what is global](self#what-is-global-per-process)). A TOML text
    /// the config refuses (bad syntax, a bad `[server]` value) is an
    /// error, and nothing starts; so is a service that cannot serve (two
    /// operations with one operation id, say).
    pub async fn start<F, R>(service: Service<F>, config_toml: &str) -> Result<Self, TestError>
    where
        F: Fn(App) -> R + Clone + Send + 'static,
        R: RoutesDone + 'static,
    {
        let me = std::thread::current().id();
        if *HOLDER.lock() == Some(me) {
            return Err(TestError::AlreadyRunning);
        }
        let turn = Turn {
            _guard: TURN.clone().lock_owned().await,
        };
        *HOLDER.lock() = Some(me);
        // On an error (or if this future is dropped), `turn` clears HOLDER
        // and unlocks after the service's thread has ended.
        Self::start_in_turn(service, config_toml, turn).await
    }

    async fn start_in_turn<F, R>(
        service: Service<F>,
        config_toml: &str,
        turn: Turn,
    ) -> Result<Self, TestError>
    where
        F: Fn(App) -> R + Clone + Send + 'static,
        R: RoutesDone + 'static,
    {
        let process = process()?;
        // Its lines from here on: the config's own (unknown keys...) too.
        let first_line = process.logs.len();
        write_atomically(&process.file, config_toml).map_err(TestError::Start)?;
        config::config().reload_with(true)?;
        // Its levels now, not when the bus delivers the change.
        crate::default::logging::apply_config_now();
        crate::default::management::probes::reset_readiness();
        let listeners = crate::default::actix::test_listeners().map_err(TestError::Start)?;
        let address = listeners.public.local_addr().map_err(TestError::Start)?;
        let management = listeners.management_address().map_err(TestError::Start)?;
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let requests = client()?;
        let (done_tx, mut done) = oneshot::channel();
        let (serving_tx, serving) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("serve-common-test".to_owned())
            .spawn(move || {
                let served = actix_web::rt::System::new().block_on(async move {
                    service.serve_until(listeners, stop_rx, serving_tx).await
                });
                let _ = done_tx.send(served);
            })
            .map_err(TestError::Start)?;
        let mut running = Running {
            stop: Some(stop),
            thread: Some(thread),
        };
        // Serving, or stopped before (the routes' document refused...).
        if serving.await.is_err() {
            let joined = running.join();
            return Err(match (done.try_recv(), joined) {
                (Ok(Err(error)), _) | (_, Err(error)) => TestError::Start(error),
                _ => TestError::Start(io::Error::other("the service stopped as it started")),
            });
        }
        Ok(Self {
            address,
            management,
            process,
            first_line,
            done: Some(done),
            requests,
            running,
            _turn: turn,
        })
    }

    /// The address the service listens on (`127.0.0.1:<port>`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>` followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The management listener's URL for `path`, when the config sets
    /// `management.bind`.
    pub fn management_url(&self, path: &str) -> Option<String> {
        self.management
            .map(|address| format!("http://{address}{path}"))
    }

    /// The global config (the service's).
    pub fn config(&self) -> &'static Config {
        config::config()
    }

    /// The config file (one per test binary: services take turns).
    pub fn config_path(&self) -> &Path {
        &self.process.file
    }

    /// A directory for the test's own files (beside the config file; one
    /// per test binary).
    pub fn dir(&self) -> &Path {
        self.process.dir.path()
    }

    /// Replaces the config file with `toml` and applies it now, as the
    /// file watcher would: `Ok` once the service uses it (the `config:`
    /// events of the changes are notified by then), or the error a bad
    /// edit gets, the old config kept. Runtime sets stay, as in production.
    pub async fn edit_config(&self, toml: &str) -> Result<(), TestError> {
        write_atomically(&self.process.file, toml).map_err(TestError::Start)?;
        config::config().reload()?;
        crate::default::logging::apply_config_now();
        Ok(())
    }

    /// Replaces the config file with `toml` and returns: the file watcher
    /// applies it, as in production. Wait for what it changes with
    /// [`expect_config_change`] (created before the write).
    pub fn write_config(&self, toml: &str) -> Result<(), TestError> {
        write_atomically(&self.process.file, toml).map_err(TestError::Start)
    }

    /// The log lines written since the service started: a handle that
    /// stays usable after [`stop`](Self::stop) (for the shutdown's lines).
    pub fn logs(&self) -> Logs {
        Logs {
            buffer: self.process.logs.clone(),
            first: self.first_line,
        }
    }

    /// [`Logs::wait_for`] on [`logs`](Self::logs).
    pub async fn wait_for_log(
        &self,
        matches: impl Fn(&LogLine) -> bool,
    ) -> Result<LogLine, TestError> {
        self.logs().wait_for(matches).await
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> TestRequest {
        self.request(Method::GET, path)
    }

    /// A POST to `path`.
    pub fn post(&self, path: &str) -> TestRequest {
        self.request(Method::POST, path)
    }

    /// A PUT to `path`.
    pub fn put(&self, path: &str) -> TestRequest {
        self.request(Method::PUT, path)
    }

    /// A PATCH to `path`.
    pub fn patch(&self, path: &str) -> TestRequest {
        self.request(Method::PATCH, path)
    }

    /// A DELETE of `path`.
    pub fn delete(&self, path: &str) -> TestRequest {
        self.request(Method::DELETE, path)
    }

    /// A request with any method to `path` (or to a full URL, such as
    /// [`management_url`](Self::management_url)'s).
    pub fn request(&self, method: Method, path: &str) -> TestRequest {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            self.url(path)
        };
        TestRequest {
            method,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: DEFAULT_TIMEOUT,
            requests: self.requests.clone(),
        }
    }

    /// GETs `path` and reads its 2xx answer's JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, TestError> {
        self.get(path).send().await?.ok()?.json()
    }

    /// POSTs `body` as JSON to `path` and reads its 2xx answer's JSON body.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, TestError> {
        self.post(path).json(body)?.send().await?.ok()?.json()
    }

    /// Stops the service gracefully (as SIGTERM would: readiness 503,
    /// `server.drain_seconds`, in-flight requests finish) and waits until
    /// it has stopped.
    pub async fn stop(mut self) -> Result<(), TestError> {
        if let Some(stop) = &self.running.stop {
            let _ = stop.send("TestService::stop");
        }
        // No answer: the thread panicked (its join says so).
        let served = match self.done.take() {
            Some(done) => done.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        // Done serving: the thread is on its way out.
        let joined = self.running.join();
        served.and(joined).map_err(TestError::Stopped)
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Shown with the failed test's output (the test thread's
            // standard error is captured).
            eprintln!("--- the test service's log lines ---");
            for line in self.logs().lines() {
                eprintln!("{line}");
            }
        }
        // Then `running` stops the service at once (a closed channel) and
        // waits for it, then `_turn` lets the next one start.
    }
}

/// Writes `text` to `file` through a rename, so the watcher never reads it
/// half-written.
fn write_atomically(file: &Path, text: &str) -> io::Result<()> {
    let staged = file.with_extension("toml.next");
    std::fs::write(&staged, text)?;
    std::fs::rename(&staged, file)
}

/// A request to a [`TestService`], sent with [`send`](Self::send).
#[derive(Debug)]
#[must_use = "nothing is sent until `send`"]
pub struct TestRequest {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    requests: mpsc::UnboundedSender<Job>,
}

impl TestRequest {
    /// Adds a header.
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value (a test's
    /// literal is wrong).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).unwrap_or_else(|e| panic!("header {name:?}: {e}"));
        let value =
            HeaderValue::try_from(value).unwrap_or_else(|e| panic!("header value {value:?}: {e}"));
        self.headers.append(name, value);
        self
    }

    /// `body` as the JSON body (with `Content-Type: application/json`).
    pub fn json(mut self, body: &impl Serialize) -> Result<Self, TestError> {
        self.body = Bytes::from(serde_json::to_vec(body)?);
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(self)
    }

    /// A raw body (set `Content-Type` with [`header`](Self::header)).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// How long the answer may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole answer. Any status is `Ok`
    /// (see [`TestResponse::ok`]); an error is a request that could not be
    /// sent or answered.
    pub fn send(self) -> impl Future<Output = Result<TestResponse, TestError>> + Send + 'static {
        let (answer, answered) = oneshot::channel();
        let (method, url) = (self.method.clone(), self.url.clone());
        let sent = self.requests.clone().send(Job {
            request: self,
            answer,
        });
        async move {
            let failed = |message: String| TestError::Request {
                method: method.clone(),
                url: url.clone(),
                message,
            };
            if sent.is_err() {
                return Err(failed("the test service has stopped".to_owned()));
            }
            match answered.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(message)) => Err(failed(message)),
                Err(_) => Err(failed(
                    "the test service stopped before answering".to_owned(),
                )),
            }
        }
    }
}

/// A request for the service's thread, and where its answer goes.
struct Job {
    request: TestRequest,
    answer: oneshot::Sender<Result<TestResponse, String>>,
}

/// The client's thread: its own actix runtime (awc needs one; the test may
/// run on any), alive for the whole process so an answer in flight when a
/// service stops is still read.
fn client() -> Result<mpsc::UnboundedSender<Job>, TestError> {
    static CLIENT: once_cell::sync::OnceCell<mpsc::UnboundedSender<Job>> =
        once_cell::sync::OnceCell::new();
    CLIENT
        .get_or_try_init(|| {
            let (requests, jobs) = mpsc::unbounded_channel();
            std::thread::Builder::new()
                .name("serve-common-test-client".to_owned())
                .spawn(move || actix_web::rt::System::new().block_on(run_requests(jobs)))
                .map_err(TestError::Start)?;
            Ok(requests)
        })
        .cloned()
}

/// The largest answer the client reads.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Sends the tests' requests with `awc`, each in a task of its own.
async fn run_requests(mut jobs: mpsc::UnboundedReceiver<Job>) {
    let client = awc::Client::default();
    while let Some(Job { request, answer }) = jobs.recv().await {
        let mut builder = client
            .request(request.method.clone(), &request.url)
            .timeout(request.timeout);
        for (name, value) in &request.headers {
            builder = builder.append_header((name.clone(), value.clone()));
        }
        let (method, url) = (request.method.clone(), request.url.clone());
        actix_web::rt::spawn(async move {
            let result = async {
                let mut response = builder
                    .send_body(request.body)
                    .await
                    .map_err(|e| e.to_string())?;
                let body = response
                    .body()
                    .limit(MAX_RESPONSE_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut headers = HeaderMap::new();
                for (name, value) in response.headers() {
                    headers.append(name.clone(), value.clone());
                }
                Ok(TestResponse {
                    method,
                    url,
                    status: response.status(),
                    headers,
                    body,
                })
            }
            .await;
            let _ = answer.send(result);
        });
    }
}

/// An answer of a [`TestService`], read whole.
#[derive(Clone, Debug)]
pub struct TestResponse {
    method: Method,
    url: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl TestResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header's value as text, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `X-Request-Id` the service answered with: the request id of
    /// the request's log lines ([`LogLine::request_id`]).
    pub fn request_id(&self) -> Option<&str> {
        self.header("x-request-id")
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body read as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, TestError> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Itself if the status is 2xx, else [`TestError::Status`] with the
    /// body.
    pub fn ok(self) -> Result<Self, TestError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(TestError::Status {
                status: self.status,
                body: self.text(),
                method: self.method,
                url: self.url,
            })
        }
    }
}

/// The log lines of the process, as JSON lines.
#[derive(Default)]
struct LogBuffer {
    lines: Mutex<Vec<Arc<str>>>,
    grew: Notify,
}

impl LogBuffer {
    fn len(&self) -> usize {
        self.lines.lock().len()
    }

    fn since(&self, first: usize) -> Vec<LogLine> {
        let lines = self.lines.lock();
        lines
            .get(first..)
            .unwrap_or_default()
            .iter()
            .map(|raw| LogLine::parse(raw.clone()))
            .collect()
    }
}

/// The log lines of a [`TestService`], from its start on (lines are
/// captured as serve-common's JSON lines, whatever the `[logging]`
/// outputs; the levels of `[logging]` apply).
#[derive(Clone)]
pub struct Logs {
    buffer: Arc<LogBuffer>,
    first: usize,
}

impl fmt::Debug for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logs")
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl Logs {
    /// The lines so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.buffer.since(self.first)
    }

    /// The first line for which `matches` holds, waiting for it up to
    /// [`DEFAULT_TIMEOUT`]. A request's lines can come after its response
    /// (the request line, for one): wait for them rather than read
    /// [`lines`](Self::lines) at once.
    pub async fn wait_for(&self, matches: impl Fn(&LogLine) -> bool) -> Result<LogLine, TestError> {
        self.wait_for_within(DEFAULT_TIMEOUT, matches).await
    }

    /// [`wait_for`](Self::wait_for) with a timeout.
    pub async fn wait_for_within(
        &self,
        timeout: Duration,
        matches: impl Fn(&LogLine) -> bool,
    ) -> Result<LogLine, TestError> {
        let search = async {
            let mut next = self.first;
            loop {
                let notified = self.buffer.grew.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let lines = self.buffer.since(next);
                next += lines.len();
                if let Some(line) = lines.into_iter().find(|line| matches(line)) {
                    return line;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, search)
            .await
            .map_err(|_| TestError::Timeout {
                what: "a matching log line".to_owned(),
                timeout,
            })
    }
}

/// The `MakeWriter` of the capture: each line goes into the buffer.
struct Capture(Arc<LogBuffer>);

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Capture {
    type Writer = CaptureWriter<'w>;

    fn make_writer(&'w self) -> Self::Writer {
        CaptureWriter {
            buffer: &self.0,
            pending: Vec::new(),
        }
    }
}

/// Collects one event's bytes; its lines reach the buffer when dropped.
struct CaptureWriter<'w> {
    buffer: &'w LogBuffer,
    pending: Vec<u8>,
}

impl Write for CaptureWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for CaptureWriter<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.pending);
        let mut added = false;
        {
            let mut lines = self.buffer.lines.lock();
            for line in text.lines().filter(|line| !line.is_empty()) {
                lines.push(Arc::from(line));
                added = true;
            }
        }
        if added {
            self.buffer.grew.notify_waiters();
        }
    }
}

/// A captured log line: the JSON line serve-common writes (see
/// [`logging`](crate::default::logging)), with accessors.
#[derive(Clone, Debug)]
pub struct LogLine {
    raw: Arc<str>,
    json: serde_json::Value,
}

impl LogLine {
    fn parse(raw: Arc<str>) -> Self {
        let json = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
        Self { raw, json }
    }

    /// The whole line as JSON: `timestamp`, `level`, `target`, `fields`,
    /// `spans`.
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// `"INFO"`, `"WARN"`...
    pub fn level(&self) -> &str {
        self.json["level"].as_str().unwrap_or_default()
    }

    /// The module that logged it (`my_service::jobs`).
    pub fn target(&self) -> &str {
        self.json["target"].as_str().unwrap_or_default()
    }

    /// The message.
    pub fn message(&self) -> Option<&str> {
        self.json["fields"]["message"].as_str()
    }

    /// A field of the event (`tracing::info!(id = 3, "...")`'s `id`), else
    /// of the innermost span that has it.
    pub fn field(&self, name: &str) -> Option<&serde_json::Value> {
        if let Some(value) = self.json["fields"].get(name) {
            return Some(value);
        }
        self.json["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|span| span.get(name))
    }

    /// The request id of the request it was logged for.
    pub fn request_id(&self) -> Option<&str> {
        self.field("request_id").and_then(serde_json::Value::as_str)
    }
}

impl fmt::Display for LogLine {
    /// `LEVEL target: message key=value...`, or the raw line if it is not
    /// JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(fields) = self.json["fields"].as_object() else {
            return f.write_str(&self.raw);
        };
        write!(
            f,
            "{} {}: {}",
            self.level(),
            self.target(),
            self.message().unwrap_or_default()
        )?;
        for (name, value) in fields.iter().filter(|(name, _)| *name != "message") {
            match value {
                serde_json::Value::String(text) => write!(f, " {name}={text}")?,
                other => write!(f, " {name}={other}")?,
            }
        }
        if let Some(id) = self.request_id() {
            write!(f, " request_id={id}")?;
        }
        Ok(())
    }
}

/// A wait for an event, registered when made: [`expect_event`].
#[must_use = "the wait is for `within` or `await`"]
pub struct ExpectedEvent {
    waiter: event::EventWaiter,
    what: String,
}

impl fmt::Debug for ExpectedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectedEvent")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

/// Starts waiting for an event matching `pattern` on the global bus. Make
/// it before the action that notifies the event, then `.within(timeout)`
/// or `.await` ([`DEFAULT_TIMEOUT`]):
///
/// ```no_run
/// # async fn f(service: serve_common::testing::TestService) -> Result<(), serve_common::testing::TestError> {
/// let done = serve_common::testing::expect_event("job.done")?;
/// service.post("/jobs").send().await?;
/// let event = done.await?;
/// assert_eq!(event.name(), "job.done");
/// # Ok(()) }
/// ```
pub fn expect_event(pattern: &str) -> Result<ExpectedEvent, TestError> {
    Ok(ExpectedEvent {
        waiter: event::wait_for(pattern)?,
        what: format!("an event matching `{pattern}`"),
    })
}

/// Starts waiting for a change of the config key `path` (its
/// `config:<path>` event, whatever made it: an edit, a runtime set);
/// the event's payload is a [`ConfigChange`](crate::config::ConfigChange).
pub fn expect_config_change(path: &str) -> Result<ExpectedEvent, TestError> {
    Ok(ExpectedEvent {
        waiter: event::wait_for(format!("config:{path}").as_str())?,
        what: format!("a change of config `{path}`"),
    })
}

impl ExpectedEvent {
    /// The event, if one comes within `timeout`.
    pub async fn within(self, timeout: Duration) -> Result<Event, TestError> {
        let what = self.what;
        tokio::time::timeout(timeout, self.waiter)
            .await
            .map_err(|_| TestError::Timeout { what, timeout })
    }
}

impl std::future::IntoFuture for ExpectedEvent {
    type Output = Result<Event, TestError>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.within(DEFAULT_TIMEOUT))
    }
}
