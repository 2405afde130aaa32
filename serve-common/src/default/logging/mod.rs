//! The default logging setup, on `tracing` (the Python original's
//! `default.logging`, which used loguru).
//!
//! ```no_run
//! use serve_common::default::logging;
//!
//! logging::add_output_stderr()?;           // coloured on a terminal
//! logging::add_output_file(None)?;         // logs/app.log, rotated at 2 MB
//! tracing::info!(user = "ann", "logged in");
//! // [2026-11-28 10:00:00.123] [INFO    ] [4242] logged in user="ann"
//! logging::flush();                        // on the way out
//! # Ok::<(), logging::LoggingError>(())
//! ```
//!
//! - One subscriber for the process, installed on first use; outputs can
//!   be added later. One global, reloadable filter carries the level and
//!   the per-target levels (reloading per-layer filters panics:
//!   tracing#1629).
//! - The line format is the original's: `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL   ]
//!   [pid] [target:span:line] [request-id] message fields`; the request id
//!   only inside a request ([`crate::request_id`]), the location only at TRACE
//!   (tracing events carry no function name: the innermost span's name
//!   stands for it).
//! - The level follows config `logging.level`, and per-target levels the
//!   table `logging.targets` (`"my_app::db" = "trace"`), at run time: a
//!   `config:logging.*` event re-reads both, so with IPC every process
//!   follows a change. Levels are the original's names (TRACE DEBUG INFO
//!   SUCCESS WARNING ERROR CRITICAL), tracing's (WARN) or OFF, in any
//!   case. An unknown level is refused with an error log line and the
//!   effective level stays; [`level`] reports the effective one.
//! - File outputs go under config `logging.logs_dir` (default `logs`,
//!   created 0700), rotate by size (2 MB by default, [`FileOutput`]) keeping
//!   a few old files, and are written off the caller's thread with
//!   backpressure: a full buffer makes the logging thread wait, nothing is
//!   dropped. [`flush`] writes out what is buffered and closes the files.
//! - One file can be shared by every process of a service (the supervisor,
//!   the workers, the IPC server): lines are appended in whole batches
//!   under a lock file beside it (`.<name>.lock`), and whichever process
//!   finds it full rotates it under that lock; the others see the new
//!   file before their next write. Every line is whole and in exactly one
//!   file; a rotated file is never written again. `{pid}` and `{worker}`
//!   in a file's name give each process a file of its own instead.
//! - A file that cannot be written (or rotated) never panics and never
//!   blocks: it is reported once as an ERROR line on standard error and by
//!   [`health`] (the `logging` check of `/manage/health`), lines wait (up
//!   to 1 MiB, then are counted: [`lines_lost`]) while it is retried with a
//!   back-off, and a WARNING line in it says what was lost once it works.
//!   A file that cannot rotate grows past `max_bytes` rather than lose
//!   lines.
//! - The INFO start-up lines of [`QUIET_TARGETS`] (actix-server,
//!   async-nats) show at DEBUG and TRACE only, unless a per-target level
//!   names them.
//! - JSON lines are an option ([`FileOutput::json`],
//!   [`add_output_writer_json`]).

use std::collections::BTreeMap;
use std::fmt as stdfmt;
use std::io;
use std::path::PathBuf;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{self, ConfigError};
use crate::event;

mod file;

/// The level names accepted, as the original spelled them.
pub const LEVEL_NAMES: [&str; 7] = [
    "TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL",
];

/// A level name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level {given}: expected one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL (or WARN, OFF), in any case")]
pub struct LevelError {
    /// What was given, as text.
    pub given: String,
}

/// Reads a level name: the original's, tracing's, or OFF; any case.
/// Returns the canonical (upper-case) name and the filter directive.
pub fn parse_level(name: &str) -> Result<(String, &'static str), LevelError> {
    let upper = name.trim().to_ascii_uppercase();
    let directive = match upper.as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" | "SUCCESS" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        "OFF" => "off",
        _ => {
            return Err(LevelError {
                given: format!("{name:?}"),
            });
        }
    };
    Ok((upper, directive))
}

/// What went wrong setting logging up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// Another global subscriber was installed first.
    #[error("another tracing subscriber is installed already: {0}")]
    OtherSubscriber(String),
    /// A log file or directory cannot be created.
    #[error("cannot open log file {}: {source}", path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A level that is not one.
    #[error(transparent)]
    Level(#[from] LevelError),
    /// The config could not be read or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

type Inner = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Inner> + Send + Sync>;

struct State {
    filter: reload::Handle<EnvFilter, Registry>,
    outputs: reload::Handle<Vec<Output>, Inner>,
    /// The effective level and per-target levels.
    setting: Mutex<(String, BTreeMap<String, String>)>,
    guards: Mutex<Vec<tracing_appender::non_blocking::WorkerGuard>>,
    /// The file outputs' health.
    files: Mutex<Vec<std::sync::Arc<file::FileStatus>>>,
    /// Start-up lines held (see [`capture_start_up`]).
    start_up: Mutex<Option<Vec<(Level, String, String)>>>,
    capturing: std::sync::atomic::AtomicBool,
    /// Parallel to the outputs: which are files (closed by `flush`). Not a
    /// second reloadable layer: an empty `Vec` layer answers
    /// `Interest::never`, which would mute every output while no file is on.
    file_outputs: Mutex<Vec<bool>>,
}

static STATE: OnceCell<State> = OnceCell::new();

/// A target is a module path (`my_app::db`): anything else could inject
/// filter directives (`debug,x` would change the global level).
fn check_target(target: &str) -> Result<(), LevelError> {
    let valid = !target.is_empty()
        && target.split("::").all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(LevelError {
            given: format!("target {target:?} (a target is a module path such as \"my_app::db\")"),
        })
    }
}

/// Libraries whose INFO lines are start-up chatter ("starting 2 workers",
/// "Actix runtime found; starting in Actix runtime", async-nats' "event:
/// connected"): shown at DEBUG and TRACE only, unless a per-target level
/// names them (or a prefix of theirs).
pub const QUIET_TARGETS: [&str; 2] = ["actix_server", "async_nats"];

fn directives(level: &str, targets: &BTreeMap<String, String>) -> Result<String, LevelError> {
    let global = parse_level(level)?.1;
    let mut out = global.to_owned();
    for (target, target_level) in targets {
        check_target(target)?;
        out.push_str(&format!(",{target}={}", parse_level(target_level)?.1));
    }
    if global == "info" {
        for quiet in QUIET_TARGETS {
            // A directive's target matches by prefix: the user's, if any,
            // decides.
            if !targets.keys().any(|t| quiet.starts_with(t.as_str())) {
                out.push_str(&format!(",{quiet}=warn"));
            }
        }
    }
    Ok(out)
}

fn state() -> Result<&'static State, LoggingError> {
    STATE.get_or_try_init(|| {
        let (filter, filter_handle) = reload::Layer::new(EnvFilter::new(
            directives("INFO", &BTreeMap::new()).unwrap_or_else(|_| "info".to_owned()),
        ));
        let (outputs, outputs_handle) = reload::Layer::new(Vec::<Output>::new());
        let subscriber = tracing_subscriber::registry().with(filter).with(outputs);
        // The OpenTelemetry layer is there from the start (nothing can be
        // added later but through a reload, which hides it from the spans
        // that look for it); it records nothing until an endpoint is set.
        #[cfg(feature = "otel")]
        let subscriber = subscriber.with(crate::telemetry::layer());
        subscriber
            .try_init()
            .map_err(|e| LoggingError::OtherSubscriber(e.to_string()))?;
        let state = State {
            filter: filter_handle,
            outputs: outputs_handle,
            setting: Mutex::new(("INFO".to_owned(), BTreeMap::new())),
            guards: Mutex::new(Vec::new()),
            files: Mutex::new(Vec::new()),
            start_up: Mutex::new(None),
            capturing: std::sync::atomic::AtomicBool::new(false),
            file_outputs: Mutex::new(Vec::new()),
        };
        Ok(state)
    })
}

/// Installs the subscriber (once) and applies the config's levels, and
/// follows them from now on.
pub fn init() -> Result<(), LoggingError> {
    static FOLLOWING: OnceCell<()> = OnceCell::new();
    state()?;
    FOLLOWING.get_or_try_init(|| {
        // Guards the section from now on (the main macro registered it at
        // start-up already, with a clear error if it was wrong).
        if let Err(error) = LoggingSettings::guard_global() {
            tracing::error!(%error, "the [logging] config section is invalid; edits to it are checked from now on");
        }
        if let Err(error) = apply_config() {
            tracing::error!(%error, "log level from the config refused; keeping {}", level());
        }
        event::bus()
            .on("config:logging.*")
            .in_supervisor()
            .label("serve_common::default::logging")
            .call(|_: &event::Event| {
                apply_config().map_err(|e| format!("{e}; keeping {}", level()))
            })
            .map(drop)
            .map_err(|e| LoggingError::OtherSubscriber(e.to_string()))
    })?;
    Ok(())
}

/// Applies the global config's levels now (a [`crate::testing`] service
/// whose lines must follow its config from its first request on).
#[cfg(feature = "testing")]
pub(crate) fn apply_config_now() {
    if let Err(error) = apply_config() {
        tracing::error!(%error, "log level from the config refused; keeping {}", level());
    }
}

/// Reads `logging.level` and `logging.targets` from the global config and
/// applies them, or changes nothing if any is not a level.
fn apply_config() -> Result<(), LevelError> {
    let config = config::config();
    let level = match config.get_opt::<toml::Value>("logging.level") {
        Ok(Some(toml::Value::String(level))) => level,
        Ok(Some(other)) => {
            return Err(LevelError {
                given: other.to_string(),
            })
        }
        _ => "INFO".to_owned(),
    };
    let targets: BTreeMap<String, String> =
        match config.get_opt::<BTreeMap<String, toml::Value>>("logging.targets") {
            Ok(Some(table)) => table
                .into_iter()
                .map(|(target, value)| match value {
                    toml::Value::String(level) => Ok((target, level)),
                    other => Err(LevelError {
                        given: other.to_string(),
                    }),
                })
                .collect::<Result<_, _>>()?,
            _ => BTreeMap::new(),
        };
    apply(&level, targets)
}

fn apply(level: &str, targets: BTreeMap<String, String>) -> Result<(), LevelError> {
    let Some(state) = STATE.get() else {
        return Ok(());
    };
    let filter = EnvFilter::builder()
        .parse(directives(level, &targets)?)
        .map_err(|e| LevelError {
            given: e.to_string(),
        })?;
    let mut setting = state.setting.lock();
    let canonical = parse_level(level)?.0;
    let targets = targets
        .into_iter()
        .map(|(t, l)| parse_level(&l).map(|(name, _)| (t, name)))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    if state.filter.reload(filter).is_ok() {
        *setting = (canonical, targets);
    }
    Ok(())
}

/// The effective level (canonical name), whatever the config says.
pub fn level() -> String {
    STATE
        .get()
        .map(|s| s.setting.lock().0.clone())
        .unwrap_or_else(|| "INFO".to_owned())
}

/// The effective per-target levels.
pub fn targets() -> BTreeMap<String, String> {
    STATE
        .get()
        .map(|s| s.setting.lock().1.clone())
        .unwrap_or_default()
}

/// The `[logging]` config section as serve-common reads it; registered as
/// a typed [section](crate::config::Config::section) by
/// `#[serve_common::main]` and [`init`], so an edit that logging could not
/// use (`level = 5`, an unknown level, a target that is not a module path)
/// is refused like invalid TOML.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LoggingSettings {
    /// The level, any of [`parse_level`]'s names (default INFO).
    pub level: Option<String>,
    /// Levels per target (a module path).
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// A log file's name (under `logs_dir`), for `#[serve_common::main]`.
    pub file: Option<String>,
    /// The directory of log files (default `logs`).
    pub logs_dir: Option<PathBuf>,
    /// Rotate a file past this size.
    pub max_bytes: Option<usize>,
    /// Rotated files to keep.
    pub keep: Option<usize>,
    /// JSON lines in the file.
    pub json: Option<bool>,
    /// Whether to log to standard error (default true).
    pub stderr: Option<bool>,
}

impl LoggingSettings {
    /// Whether logging can use these settings.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(level) = &self.level {
            parse_level(level).map_err(|e| format!("`level`: {e}"))?;
        }
        for (target, level) in &self.targets {
            check_target(target).map_err(|e| format!("`targets`: {e}"))?;
            parse_level(level).map_err(|e| format!("`targets.{target}`: {e}"))?;
        }
        Ok(())
    }

    /// Registers the section on `config` (its reads and every change are
    /// checked from now on).
    pub fn register(config: &config::Config) -> Result<config::Section<Self>, config::ConfigError> {
        config.section_known("logging", Self::validate, |parent| match parent {
            "" => config::section::fields_of::<Self>(),
            _ => &[],
        })
    }

    /// Registers the section on the global config, once (the main macro
    /// and [`init`] both ask).
    pub(crate) fn guard_global() -> Result<(), config::ConfigError> {
        static GUARD: OnceCell<config::Section<LoggingSettings>> = OnceCell::new();
        GUARD
            .get_or_try_init(|| Self::register(config::config()))
            .map(drop)
    }
}

/// Validates `name`, then sets config `logging.level` (so, with IPC, every
/// process follows).
pub fn set_level(name: &str) -> Result<(), LoggingError> {
    let (canonical, _) = parse_level(name)?;
    config::config().set("logging.level", canonical)?;
    Ok(())
}

/// Validates `name`, then sets config `logging.targets."<target>"` (one
/// path per target, so concurrent changes of different targets from
/// different processes both land).
pub fn set_target_level(target: &str, name: &str) -> Result<(), LoggingError> {
    check_target(target)?;
    let (canonical, _) = parse_level(name)?;
    config::config().set(&format!("logging.targets.{target}"), canonical)?;
    Ok(())
}

/// Drops the level set at run time (config `unset` of `logging.level`):
/// every process falls back to the file's (or INFO).
pub fn reset_level() -> Result<(), LoggingError> {
    config::config().unset("logging.level")?;
    Ok(())
}

/// Drops `target`'s level set at run time: the file's applies again.
pub fn reset_target_level(target: &str) -> Result<(), LoggingError> {
    check_target(target)?;
    config::config().unset(&format!("logging.targets.{target}"))?;
    Ok(())
}

/// Outputs to add in one go: `logging::builder().stderr().file("app.log").install()`.
/// Installing twice adds the second builder's outputs to the first's.
#[derive(Debug, Default)]
#[must_use = "nothing is installed until `install`"]
pub struct LoggingBuilder {
    stderr: bool,
    files: Vec<FileOutput>,
}

/// A builder with no outputs yet.
pub fn builder() -> LoggingBuilder {
    LoggingBuilder::default()
}

impl LoggingBuilder {
    /// Standard error, coloured on a terminal unless `NO_COLOR` is set.
    pub fn stderr(mut self) -> Self {
        self.stderr = true;
        self
    }

    /// A size-rotated file under config `logging.logs_dir`.
    pub fn file(self, name: impl Into<String>) -> Self {
        self.file_output(FileOutput::new(name))
    }

    /// A file with explicit options.
    pub fn file_output(mut self, output: FileOutput) -> Self {
        self.files.push(output);
        self
    }

    /// Installs the subscriber (once), follows the config's levels and adds
    /// the outputs. Returns the files' paths.
    pub fn install(self) -> Result<Vec<PathBuf>, LoggingError> {
        init()?;
        if self.stderr {
            add_output_stderr()?;
        }
        let paths = self.files.into_iter().map(add_file).collect();
        replay_start_up();
        paths
    }
}

/// Lines held by [`capture_start_up`] at most.
const START_UP_LINES: usize = 10_000;

/// Lines logged before any output exists (the config is read before it
/// says where logs go), held until [`LoggingBuilder::install`] replays
/// them into the outputs it adds, in their formats. `#[serve_common::main]`
/// calls it first thing; holds up to 10,000 lines.
pub fn capture_start_up() -> Result<(), LoggingError> {
    let state = state()?;
    if state.start_up.lock().is_some() {
        return Ok(());
    }
    *state.start_up.lock() = Some(Vec::new());
    state
        .capturing
        .store(true, std::sync::atomic::Ordering::Release);
    push(Box::new(StartUpCapture), false)
}

/// Replays what [`capture_start_up`] held, once (target
/// `serve_common::start_up`, the original target in a field).
fn replay_start_up() {
    let Some(state) = STATE.get() else {
        return;
    };
    state
        .capturing
        .store(false, std::sync::atomic::Ordering::Release);
    let Some(lines) = state.start_up.lock().take() else {
        return;
    };
    for (level, target, text) in lines {
        match level {
            Level::ERROR => {
                tracing::error!(target: "serve_common::start_up", from = %target, "{text}")
            }
            Level::WARN => {
                tracing::warn!(target: "serve_common::start_up", from = %target, "{text}")
            }
            Level::INFO => {
                tracing::info!(target: "serve_common::start_up", from = %target, "{text}")
            }
            Level::DEBUG => {
                tracing::debug!(target: "serve_common::start_up", from = %target, "{text}")
            }
            Level::TRACE => {
                tracing::trace!(target: "serve_common::start_up", from = %target, "{text}")
            }
        }
    }
}

/// The output that holds start-up lines (see [`capture_start_up`]).
struct StartUpCapture;

impl<S: Subscriber> Layer<S> for StartUpCapture {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let Some(state) = STATE.get() else {
            return;
        };
        if !state.capturing.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut text = FieldsText::default();
        event.record(&mut text);
        let metadata = event.metadata();
        if let Some(lines) = state.start_up.lock().as_mut() {
            if lines.len() < START_UP_LINES {
                lines.push((*metadata.level(), metadata.target().to_owned(), text.0));
            }
        }
    }
}

/// An event's fields as text: the message, then ` name=value`.
#[derive(Default)]
struct FieldsText(String);

impl tracing::field::Visit for FieldsText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn stdfmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// A size-rotated log file.
#[derive(Clone, Debug)]
pub struct FileOutput {
    /// The file name, under the directory. `{pid}` is replaced by the
    /// process id, `{worker}` by the worker's index in a worker process
    /// (`main` elsewhere: the supervisor, a single-process service, its
    /// IPC server), for a file per process; without them the service's
    /// processes share the file (see the [module docs](self)).
    pub name: String,
    /// The directory (default: config `logging.logs_dir`, or `logs`).
    pub dir: Option<PathBuf>,
    /// Rotate before a line would take the file past this size (default
    /// 2 MB): a file holds more only when a single line is longer. Lines
    /// are never split across files.
    pub max_bytes: usize,
    /// Rotated files to keep (default 5): `app.log.1` is the newest.
    pub keep: usize,
    /// JSON lines instead of the text format (default false).
    pub json: bool,
}

impl FileOutput {
    /// `name` with the defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dir: None,
            max_bytes: 2_000_000,
            keep: 5,
            json: false,
        }
    }
}

/// Adds an output that writes lines to `make_writer` (for tests, or any
/// `MakeWriter`), in the line format.
pub fn add_output_writer<W>(make_writer: W, ansi: bool) -> Result<(), LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    init()?;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .fmt_fields(NoSpanFields)
        .event_format(LineFormat { ansi })
        .with_writer(make_writer);
    push(Box::new(layer), false)
}

/// JSON lines: `timestamp`, `level`, `fields` (with `message`), `target`,
/// and the spans (a request's span carries its `request_id`).
fn json_layer<W>(make_writer: W) -> Output
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Box::new(
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(make_writer),
    )
}

/// Adds an output that writes JSON lines to `make_writer`.
pub fn add_output_writer_json<W>(make_writer: W) -> Result<(), LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    init()?;
    push(json_layer(make_writer), false)
}

fn push(output: Output, is_file: bool) -> Result<(), LoggingError> {
    let state = state()?;
    state
        .outputs
        .modify(|outputs| {
            outputs.push(output);
            state.file_outputs.lock().push(is_file);
        })
        .map_err(|e| LoggingError::OtherSubscriber(e.to_string()))
}

/// Adds standard error: coloured on a terminal unless `NO_COLOR` is set.
pub fn add_output_stderr() -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    let ansi =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    add_output_writer(io::stderr, ansi)
}

/// Adds a size-rotated file (`app.log` by default) under config
/// `logging.logs_dir` (default `logs`, created with mode 0700). Returns its
/// path.
pub fn add_output_file(name: Option<&str>) -> Result<PathBuf, LoggingError> {
    add_file(FileOutput::new(name.unwrap_or("app.log")))
}

/// Adds a file output with explicit options; returns its path.
pub fn add_file(output: FileOutput) -> Result<PathBuf, LoggingError> {
    use std::os::unix::fs::DirBuilderExt;
    init()?;
    let dir = output.dir.clone().unwrap_or_else(|| {
        PathBuf::from(config::config().get_or("logging.logs_dir", "logs".to_owned()))
    });
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| LoggingError::File {
            path: dir.clone(),
            source,
        })?;
    let path = dir.join(expand_name(&output.name));
    let file =
        file::SharedFile::new(path.clone(), output.max_bytes, output.keep).map_err(|source| {
            LoggingError::File {
                path: path.clone(),
                source,
            }
        })?;
    let status = file.status();
    // Off the caller's thread, never lossy: a full buffer waits (the file
    // itself never blocks: see the `file` module).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("serve-common-log-file")
        .finish(file);
    let state = state()?;
    state.guards.lock().push(guard);
    state.files.lock().push(status);
    #[cfg(feature = "actix")]
    register_health_check();
    if output.json {
        push(json_layer(writer), true)?;
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(NoSpanFields)
            .event_format(LineFormat { ansi: false })
            .with_writer(writer);
        push(Box::new(layer), true)?;
    }
    Ok(path)
}

/// `{pid}` and `{worker}` in a file name: this process's id, and the
/// worker's index in a worker process (`main` in the supervisor or a
/// single-process service, and in its IPC server).
fn expand_name(name: &str) -> String {
    let worker = std::env::var("SERVE_COMMON_WORKER").unwrap_or_else(|_| "main".to_owned());
    name.replace("{pid}", &std::process::id().to_string())
        .replace("{worker}", &worker)
}

/// The file outputs' state: `Err` naming each failing file (it cannot be
/// written or rotated: see [`FileOutput`]), else `Ok`. The `logging`
/// check of `/manage/health` reports it.
pub fn health() -> Result<(), String> {
    let Some(state) = STATE.get() else {
        return Ok(());
    };
    let failures: Vec<String> = state
        .files
        .lock()
        .iter()
        .filter_map(|status| status.failing.lock().clone())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Lines this process could not write to its log files (while a file
/// could not be written, beyond the 1 MiB kept waiting).
pub fn lines_lost() -> u64 {
    STATE.get().map_or(0, |state| {
        state
            .files
            .lock()
            .iter()
            .map(|s| s.lost.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    })
}

/// Lines this process wrote to its log files, and lines it lost.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn line_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    STATE.get().map_or((0, 0), |state| {
        state
            .files
            .lock()
            .iter()
            .fold((0, 0), |(written, lost), s| {
                (
                    written + s.written.load(Relaxed),
                    lost + s.lost.load(Relaxed),
                )
            })
    })
}

#[cfg(feature = "actix")]
fn register_health_check() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        crate::default::management::add_health_check_with_details("logging", health, || {
            use std::sync::atomic::Ordering::Relaxed;
            let mut details = serde_json::Map::new();
            if let Some(state) = STATE.get() {
                for status in state.files.lock().iter() {
                    let mut file = serde_json::Map::new();
                    file.insert("written".into(), status.written.load(Relaxed).into());
                    file.insert("lost".into(), status.lost.load(Relaxed).into());
                    file.insert("rotations".into(), status.rotations.load(Relaxed).into());
                    if let Some(error) = status.failing.lock().clone() {
                        file.insert("error".into(), error.into());
                    }
                    details.insert(status.path.display().to_string(), file.into());
                }
            }
            details
        });
    });
}

/// Writes out everything buffered for file outputs and closes them (they
/// leave the subscriber; other outputs stay); call it on the way out of
/// `main` (the `main` macro does, also on a panic or a start-up failure).
pub fn flush() {
    if let Some(state) = STATE.get() {
        // Start-up lines never replayed (a start-up that failed before
        // the outputs existed): to standard error, rather than nowhere.
        state
            .capturing
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(lines) = state.start_up.lock().take() {
            let mut stderr = io::stderr().lock();
            for (level, _, text) in lines {
                let (name, _) = level_name(&level);
                let _ = io::Write::write_all(&mut stderr, file::own_line(name, &text).as_bytes());
            }
        }
        // Take the file outputs out of the stack first, so nothing writes
        // to a closed writer, then let each writer drain and close.
        let _ = state.outputs.modify(|outputs| {
            let mut kinds = state.file_outputs.lock();
            let mut index = 0;
            outputs.retain(|_| {
                let keep = !kinds.get(index).copied().unwrap_or(false);
                index += 1;
                keep
            });
            kinds.retain(|is_file| !is_file);
        });
        state.guards.lock().clear();
        state.files.lock().clear();
    }
}

#[cfg(feature = "actix")]
fn current_request_id() -> Option<crate::request_id::RequestId> {
    crate::request_id::get()
}

#[cfg(not(feature = "actix"))]
fn current_request_id() -> Option<String> {
    None
}

/// The first 4 bytes of the current trace id, as 8 hex digits.
#[cfg(feature = "actix")]
fn current_trace_short() -> Option<[u8; 4]> {
    crate::trace_context::CURRENT
        .try_with(|trace| {
            let mut short = [0; 4];
            short.copy_from_slice(&trace.trace_id.0[..4]);
            short
        })
        .ok()
}

#[cfg(not(feature = "actix"))]
fn current_trace_short() -> Option<[u8; 4]> {
    None
}

/// The text outputs' span fields: none. The line format shows no span
/// (the request id and trace come from the task-locals), so formatting a
/// request span's fields for every text output would be work thrown away;
/// event fields are formatted by [`LineFormat`] itself.
struct NoSpanFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'w>,
        _fields: R,
    ) -> stdfmt::Result {
        Ok(())
    }
}

thread_local! {
    /// The last second a line of this thread was stamped with, formatted.
    static STAMP: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// The original's line format.
struct LineFormat {
    ansi: bool,
}

fn level_name(level: &Level) -> (&'static str, &'static str) {
    match *level {
        Level::TRACE => ("TRACE", "\x1b[2m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::INFO => ("INFO", "\x1b[1m"),
        Level::WARN => ("WARNING", "\x1b[33m"),
        Level::ERROR => ("ERROR", "\x1b[31m"),
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> stdfmt::Result {
        let metadata = event.metadata();
        let (name, colour) = level_name(metadata.level());
        let pid = std::process::id();
        STAMP.with(|stamp| {
            let mut stamp = stamp.borrow_mut();
            let now = chrono::Local::now();
            let millis = now.timestamp_subsec_millis().min(999);
            // The date and time to the second, formatted once a second.
            if stamp.0 != now.timestamp() || stamp.1.is_empty() {
                stamp.1 = now.format("%Y-%m-%d %H:%M:%S").to_string();
                stamp.0 = now.timestamp();
            }
            let seconds = &stamp.1;
            if self.ansi {
                write!(
                    writer,
                    "[{seconds}.{millis:03}] [{colour}{name:<8}\x1b[0m] [{pid}] "
                )
            } else {
                write!(writer, "[{seconds}.{millis:03}] [{name:<8}] [{pid}] ")
            }
        })?;
        if *metadata.level() == Level::TRACE {
            let span = ctx.lookup_current().map(|s| s.name()).unwrap_or("-");
            write!(
                writer,
                "[{}:{span}:{}] ",
                metadata.target(),
                metadata.line().unwrap_or(0)
            )?;
        }
        match (current_request_id(), current_trace_short()) {
            (Some(id), Some([a, b, c, d])) => {
                write!(writer, "[{id} {a:02x}{b:02x}{c:02x}{d:02x}] ")?;
            }
            (Some(id), None) => write!(writer, "[{id}] ")?,
            _ => {}
        }
        tracing_subscriber::fmt::format::DefaultFields::new()
            .format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
