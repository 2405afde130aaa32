//! Configuration: layered, typed, hot-reloaded. The Python original's `config` module.
//!
//! ```
//! use serve_common::config::Config;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("config.toml");
//! std::fs::write(&path, "[server]\nbind = \"127.0.0.1:8000\"\n[logging]\nlevel = \"INFO\"\n")?;
//!
//! let config = Config::builder().path(&path).no_env().build()?;
//! let bind: String = config.get("server.bind")?;
//! let workers: u32 = config.get_or("server.workers", 4);
//! config.set("logging.level", "DEBUG")?;         // notifies `config:logging.level`
//! assert_eq!(config.get::<String>("logging.level")?, "DEBUG");
//! # assert_eq!((bind.as_str(), workers), ("127.0.0.1:8000", 4));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layers
//!
//! Lowest first: defaults (from the builder) < the file < environment
//! variables < runtime [`set`](Config::set). Every read sees the merge of
//! the four. Tables merge key by key; any other value replaces what is
//! below it.
//!
//! The newest intent wins, key by key: a runtime `set` overrides the file,
//! and survives reloads that do not change that key; an edit of the file
//! that changes a key made after the `set` (by the file's modification
//! time) replaces it, in every process, with a log line saying so (the
//! process that sees it tells the others). Tools that keep an old
//! modification time on a new file (`cp -p`, `rsync -a`, `tar`) make their
//! edit count as old; a modification time in the future counts as now.
//! [`unset`](Config::unset) drops a runtime value at once (the management
//! API does it for a level with `{"level": null}`).
//!
//! # Typed sections
//!
//! [`Config::section`] registers a part of the config as a type (and
//! [`Config::section_with`] a validation): the handle reads it cheaply and
//! follows every change, and no change that would break a registered
//! section is applied. A file edit that breaks one is refused as a whole,
//! like invalid TOML (the old config stays; an ERROR line names the key and
//! where its value came from); a runtime `set` that would break one is an
//! error to its caller; registering a section the config does not satisfy
//! is an error (at start-up: a clear one, naming the key and its source).
//! `#[serve_common::main]` registers serve-common's own sections
//! (`logging`, `server`, `events`), so `logging.level = 5` is refused like
//! a syntax error.
//!
//! A value of the wrong type, in a section or read with [`Config::get`],
//! names its source: the file and line (``config `server.workers` (from
//! config.toml:12) is invalid: ..``), the environment variable
//! (`SERVE_COMMON__SERVER__WORKERS`), or a value set at run time. In
//! serve-common's own sections, a key it does not read is a WARN line
//! naming the closest one it does (``unknown config key `server.worker`
//! (from config.toml:3), ignored: did you mean `server.workers`?``), once
//! while the key stays; the application's sections are left alone.
//!
//! Environment variables: one per key, `<PREFIX>__<KEY>__<KEY>...`, prefix
//! `SERVE_COMMON` by default, keys lower-cased: `SERVE_COMMON__LOGGING__LEVEL=debug`
//! sets `logging.level`. A value that reads as a TOML value (`8080`,
//! `true`, `[1, 2]`, `"quoted"`) is taken as one; anything else is a string.
//!
//! # Paths
//!
//! A path is dot-separated keys (`"x.y.z"`); `""` is the whole table. Keys
//! that contain a dot cannot be reached by path: read their table instead.
//! A path has at most [`MAX_PATH_LEN`] bytes and [`MAX_PATH_DEPTH`] keys
//! of at most [`MAX_KEY_LEN`] bytes, and a value set at run time nests at most [`MAX_VALUE_DEPTH`]
//! levels: a `set` beyond that (here or from another process) is refused
//! with a clear error, so no change can exhaust a thread's stack.
//!
//! # Events
//!
//! A config publishes changes on an [`EventBus`] (the global one unless the
//! builder says otherwise) as `config:<path>` with a [`ConfigChange`],
//! always local-only: each process notifies its own changes, so one change
//! runs each handler once per process.
//!
//! - [`set`](Config::set) and [`unset`](Config::unset) travel to the
//!   service's other processes as one [`SET_EVENT`] carrying the value
//!   written; each process applies it to its runtime layer and notifies
//!   `config:<path>` once if its merged value changed.
//! - A reload notifies once per changed leaf: every process watches and
//!   reloads the file itself.
//!
//! A bad file on reload (invalid TOML, a broken typed section, an
//! unreadable or deleted file) is logged and the old config kept, and
//! [`RELOAD_FAILED_EVENT`] is notified; the next good edit applies with its
//! events. A reload that failed for a reason other than the file's content
//! (a permission, an I/O error) is tried again at the watcher's next event
//! or poll. Values under keys that look secret
//! (`password`, `secret`, `token`, `key`, `credential`) are redacted in
//! the change log lines.

mod layers;
mod path;
mod redact;
mod remote;
pub(crate) mod section;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use once_cell::sync::OnceCell;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use self::layers::{lookup, Layers, Stamp};
use self::path::{check_value_depth, split_path};
pub use self::path::{MAX_KEY_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN, MAX_VALUE_DEPTH};
use self::redact::log_change;
pub use self::redact::{is_secret_path, redact_url_userinfo, Secret};
pub(crate) use self::remote::is_control_event;
pub use self::remote::{ConfigSet, SET_EVENT, SYNC_EVENT};
pub use self::section::{Section, SectionRef};
use crate::event::{self, EventBus};
use crate::reloading::Reloader;

/// The environment variable that names the global config's file
/// (default: `config.toml` in the working directory).
pub const CONFIG_PATH_ENV: &str = "SERVE_COMMON_CONFIG";

/// A stamp from another process may be this far ahead of the local clock.
const MAX_CLOCK_AHEAD_NS: u64 = 3_600 * 1_000_000_000;
/// Runtime paths (sets and unsets) a config keeps, at most.
const MAX_ENTRIES: usize = 10_000;

/// The local-only event notified when a reload fails (the old config
/// stays); its payload is a [`ReloadFailure`].
pub const RELOAD_FAILED_EVENT: &str = "config_reload_failed";

/// What the configs of this process did, for the metrics.
#[derive(Debug, Default)]
pub(crate) struct ConfigStats {
    pub(crate) reloads: std::sync::atomic::AtomicU64,
    pub(crate) reload_failures: std::sync::atomic::AtomicU64,
    /// Runtime sets and unsets made here (not those applied from other
    /// processes).
    pub(crate) sets: std::sync::atomic::AtomicU64,
}

pub(crate) static STATS: ConfigStats = ConfigStats {
    reloads: std::sync::atomic::AtomicU64::new(0),
    reload_failures: std::sync::atomic::AtomicU64::new(0),
    sets: std::sync::atomic::AtomicU64::new(0),
};

fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The payload of [`RELOAD_FAILED_EVENT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// The config file.
    pub file: PathBuf,
    /// Why it was not applied.
    pub error: String,
}

/// The default prefix of per-key environment variables.
pub const DEFAULT_ENV_PREFIX: &str = "SERVE_COMMON";

/// What went wrong reading or changing the config. Every variant names the
/// path or file involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Nothing at this path.
    #[error("config has no value at `{path}`")]
    Missing {
        /// The path asked for.
        path: String,
    },
    /// A value is there but is not of the type asked for.
    #[error("config value at `{path}` (from {origin}) is not a valid `{expected}`: {message}")]
    Type {
        /// The path asked for.
        path: String,
        /// Where its value came from: the file and line, an environment
        /// variable, a runtime set, the defaults.
        origin: String,
        /// The Rust type asked for.
        expected: &'static str,
        /// What serde said.
        message: String,
    },
    /// The file is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A `set` would go through a value that is not a table.
    #[error("cannot set `{path}`: `{through}` holds a {found}, not a table")]
    NotATable {
        /// The path being set.
        path: String,
        /// The prefix that holds a non-table value.
        through: String,
        /// The TOML type found there.
        found: &'static str,
    },
    /// A value that TOML cannot hold (a `None`, a map with non-string keys...).
    #[error("cannot store a value at `{path}`: {message}")]
    Value {
        /// The path being set.
        path: String,
        /// What serde said.
        message: String,
    },
    /// The path is not dot-separated keys within the limits.
    #[error("invalid config path `{path}`: {reason}")]
    BadPath {
        /// The path (shortened if long).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value does not read as the type of a registered section (or its
    /// validation refused it).
    #[error("config `{path}` (from {origin}) is invalid: {message}")]
    Invalid {
        /// The key.
        path: String,
        /// Where its value came from: the file, an environment variable,
        /// a runtime set, the defaults.
        origin: String,
        /// Why.
        message: String,
    },
    /// [`init`] was called when the global config existed already.
    #[error("the global config is already initialized")]
    AlreadyInitialized,
    /// The file watcher could not start.
    #[error("cannot watch config file {}: {source}", file.display())]
    Watch {
        /// The file.
        file: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `watch` on a config that has no file.
    #[error("this config has no file to watch")]
    NoFile,
}

/// How a config value changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// [`Config::set`], here or in another process.
    Set,
    /// [`Config::unset`], here or in another process.
    Unset,
    /// The file was reloaded.
    Reload,
}

/// The payload of a `config:<path>` event. `T` is what a handler wants to
/// read the values as; the bus converts through serde.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange<T = Value> {
    /// The path that changed.
    pub path: String,
    /// The merged value before, if any.
    pub old: Option<T>,
    /// The merged value after, if any.
    pub new: Option<T>,
    /// What changed it.
    pub source: ChangeSource,
}

impl fmt::Display for ChangeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Set => "set",
            Self::Unset => "unset",
            Self::Reload => "reload",
        })
    }
}

/// `path: old -> new (source)`, the values written as TOML (`100`,
/// `"text"`, `(none)` for absent) and secrets redacted, as the service's
/// own "config changed" lines show them: log a change with
/// `tracing::info!(%change, ..)`.
///
/// ```
/// use serve_common::config::{ChangeSource, ConfigChange};
///
/// let change = ConfigChange {
///     path: "limits.max".to_owned(),
///     old: Some(100.into()),
///     new: Some(5.into()),
///     source: ChangeSource::Reload,
/// };
/// assert_eq!(change.to_string(), "limits.max: 100 -> 5 (reload)");
/// ```
impl fmt::Display for ConfigChange<Value> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} ({})",
            self.path,
            redact::shown(&self.path, self.old.as_ref()),
            redact::shown(&self.path, self.new.as_ref()),
            self.source
        )
    }
}

struct Inner {
    merged: ArcSwap<Table>,
    layers: Mutex<Layers>,
    file: Option<PathBuf>,
    env_prefix: Option<String>,
    bus: Option<EventBus>,
    reloader: Mutex<Option<Reloader>>,
    /// Serializes reloads: a manual one racing the watcher must not apply
    /// older bytes last.
    reload_lock: Mutex<()>,
    /// This config's stamps' tie-break: random, unlike a pid.
    origin: u64,
    /// Registered typed sections: checked before any change applies.
    sections: RwLock<Vec<Arc<dyn section::Slot>>>,
    /// The last reload failure reported (cleared by a good reload).
    last_failure: Mutex<Option<String>>,
}

/// A configuration: cheap to clone (handles share one config), reads never
/// block each other (the merged view is an atomically swapped `Arc`).
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.inner.file)
            .field("env_prefix", &self.inner.env_prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Config`].
#[must_use]
pub struct ConfigBuilder {
    file: Option<PathBuf>,
    defaults: Table,
    env_prefix: Option<String>,
    bus: Option<EventBus>,
    use_global_bus: bool,
    follow_remote: bool,
    watch: bool,
}

impl Default for ConfigBuilder {
    /// The file of [`CONFIG_PATH_ENV`] or `config.toml`, env prefix
    /// `SERVE_COMMON`, events on the global bus, not watching.
    fn default() -> Self {
        let file = std::env::var_os(CONFIG_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config.toml"));
        Self {
            file: Some(file),
            defaults: Table::new(),
            env_prefix: Some(DEFAULT_ENV_PREFIX.to_owned()),
            bus: None,
            use_global_bus: true,
            follow_remote: true,
            watch: false,
        }
    }
}

impl ConfigBuilder {
    /// Reads this file.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Reads no file: defaults, environment and runtime `set`s only.
    pub fn no_file(mut self) -> Self {
        self.file = None;
        self
    }

    /// The lowest layer.
    pub fn defaults(mut self, defaults: Table) -> Self {
        self.defaults = defaults;
        self
    }

    /// One default value.
    pub fn default_value(mut self, path: &str, value: impl Into<Value>) -> Self {
        let keys: Vec<&str> = path.split('.').collect();
        layers::insert_path(&mut self.defaults, &keys, value.into());
        self
    }

    /// Reads `<prefix>__KEY__KEY=value` variables.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_prefix = Some(prefix.into());
        self
    }

    /// Reads no environment variables.
    pub fn no_env(mut self) -> Self {
        self.env_prefix = None;
        self
    }

    /// Publishes changes on this bus instead of the global one.
    pub fn event_bus(mut self, bus: EventBus) -> Self {
        self.bus = Some(bus);
        self.use_global_bus = false;
        self
    }

    /// Publishes no events.
    pub fn no_events(mut self) -> Self {
        self.bus = None;
        self.use_global_bus = false;
        self
    }

    /// Whether `set`s notified by other processes (events from
    /// [`EventBus::deliver`]) are applied here. Default: yes.
    pub fn follow_remote_sets(mut self, follow: bool) -> Self {
        self.follow_remote = follow;
        self
    }

    /// Watches the file and reloads it on change (with the default
    /// [`Reloader`]).
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Reads the file and the environment. A missing file is a warning and
    /// an empty layer; invalid TOML is an error.
    pub fn build(self) -> Result<Config, ConfigError> {
        let file_table = match &self.file {
            Some(file) => {
                let (table, _, text) = layers::read_file(file, true)?;
                (table, text)
            }
            None => (Table::new(), std::sync::Arc::from("")),
        };
        let env = self
            .env_prefix
            .as_deref()
            .map(layers::read_env)
            .unwrap_or_default();
        let (file_table, file_text) = file_table;
        let layers = Layers {
            defaults: self.defaults,
            file: file_table,
            file_text,
            env,
            ..Layers::default()
        };
        let bus = match (self.bus, self.use_global_bus) {
            (Some(bus), _) => Some(bus),
            (None, true) => Some(event::bus().clone()),
            (None, false) => None,
        };
        let config = Config {
            inner: Arc::new(Inner {
                merged: ArcSwap::from_pointee(layers.merged()),
                layers: Mutex::new(layers),
                file: self.file,
                env_prefix: self.env_prefix,
                bus,
                reloader: Mutex::new(None),
                reload_lock: Mutex::new(()),
                origin: layers::random_origin(),
                sections: RwLock::new(Vec::new()),
                last_failure: Mutex::new(None),
            }),
        };
        if let (true, Some(bus)) = (self.follow_remote, &config.inner.bus) {
            let weak = Arc::downgrade(&config.inner);
            bus.add_inbound_hook(move |event| remote::apply_remote(&weak, event));
            // Back after an outage: ask for the runtime sets made meanwhile.
            let weak = Arc::downgrade(&config.inner);
            let _ = bus
                .on(event::LINK_REJOINED_EVENT)
                .in_supervisor()
                .label("serve_common::config (sync after an IPC outage)")
                .call(move |_: &event::Event| {
                    if let Some(inner) = weak.upgrade() {
                        Config { inner }.request_sync();
                    }
                });
        }
        if self.watch {
            config.watch()?;
        }
        Ok(config)
    }
}
static GLOBAL: OnceCell<Config> = OnceCell::new();

/// Initializes the global config from `builder`. Errors if the file is bad
/// or the global config exists already.
pub fn init(builder: ConfigBuilder) -> Result<&'static Config, ConfigError> {
    let mut fresh = false;
    let config = GLOBAL.get_or_try_init(|| {
        fresh = true;
        builder.build()
    })?;
    if fresh {
        Ok(config)
    } else {
        Err(ConfigError::AlreadyInitialized)
    }
}

/// The global config. If [`init`] was not called, the first call builds it
/// with [`ConfigBuilder::default`] and watches the file.
///
/// # Panics
///
/// If it has to build the config and the file is not valid TOML: a service
/// must not start on a config it cannot read. Call [`init`] to handle the
/// error yourself.
pub fn config() -> &'static Config {
    GLOBAL.get_or_init(|| {
        ConfigBuilder::default()
            .watch(true)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

impl Config {
    /// A builder; see [`ConfigBuilder::default`] for its defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The file at `path`, with the default environment prefix and the
    /// global bus.
    pub fn from_path(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        Self::builder().path(path).build()
    }

    /// The file this config reads, if any.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// The whole merged view, as of now.
    pub fn snapshot(&self) -> Arc<Table> {
        self.inner.merged.load_full()
    }

    /// The value at `path`, as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConfigError> {
        let merged = self.inner.merged.load();
        let value = if path.is_empty() {
            Value::Table((**merged).clone())
        } else {
            lookup(&merged, path)
                .ok_or_else(|| ConfigError::Missing {
                    path: path.to_owned(),
                })?
                .clone()
        };
        value.try_into::<T>().map_err(|e| ConfigError::Type {
            path: path.to_owned(),
            origin: self.origin_of(path),
            expected: std::any::type_name::<T>(),
            message: e.to_string(),
        })
    }

    /// The value at `path` as `T`, or `None` if there is none. A value of
    /// the wrong type is still an error.
    pub fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ConfigError> {
        match self.get(path) {
            Ok(value) => Ok(Some(value)),
            Err(ConfigError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value at `path` as `T`, or `default` if there is none. A value of
    /// the wrong type is logged as a warning and `default` returned.
    pub fn get_or<T: DeserializeOwned>(&self, path: &str, default: T) -> T {
        match self.get(path) {
            Ok(value) => value,
            Err(ConfigError::Missing { .. }) => default,
            Err(error) => {
                tracing::warn!(%error, "using the default instead");
                default
            }
        }
    }

    /// Whether there is a value at `path`.
    pub fn contains(&self, path: &str) -> bool {
        lookup(&self.inner.merged.load(), path).is_some()
    }

    /// Registers the section at `path` (`""`: the whole config) as a `T`
    /// and returns a handle that reads it and follows every change. From
    /// now on no change that does not read as a `T` is applied (see [typed
    /// sections](self#typed-sections)). An error (naming the key and where
    /// its value came from) if the config does not read as a `T` now.
    ///
    /// ```
    /// use serve_common::config::Config;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Notes { #[serde(default = "ten")] max_notes: u32 }
    /// fn ten() -> u32 { 10 }
    ///
    /// let config = Config::builder().no_file().no_env().no_events().build()?;
    /// let notes = config.section::<Notes>("notes")?;
    /// assert_eq!(notes.read().max_notes, 10);
    /// config.set("notes.max_notes", 20)?;
    /// assert_eq!(notes.read().max_notes, 20);
    /// assert!(config.set("notes.max_notes", "lots").is_err(), "refused: not a u32");
    /// # Ok::<(), serve_common::config::ConfigError>(())
    /// ```
    pub fn section<T>(&self, path: &str) -> Result<Section<T>, ConfigError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.register_section(path, None, None)
    }

    /// [`section`](Self::section) with a validation: a change is applied
    /// only if the section reads as a `T` and `validate` accepts it (its
    /// `Err` is the reason given). `validate` runs while the config is
    /// locked: it must not call this config. Each change is checked on its
    /// own, so a rule across keys (`min <= max`) may refuse a step that a
    /// later change would have made valid, and processes that learn the
    /// steps in another order may refuse different ones: prefer setting
    /// such keys together (a set of their table).
    pub fn section_with<T, F>(&self, path: &str, validate: F) -> Result<Section<T>, ConfigError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    {
        self.register_section(path, Some(Box::new(validate)), None)
    }

    /// [`section_with`](Self::section_with) for serve-common's own
    /// sections: a key `T` does not read is a WARN line naming the closest
    /// one `known` lists (a typo would otherwise be silently ignored).
    pub(crate) fn section_known<T, F>(
        &self,
        path: &str,
        validate: F,
        known: section::Known,
    ) -> Result<Section<T>, ConfigError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    {
        self.register_section(path, Some(Box::new(validate)), Some(known))
    }

    fn register_section<T>(
        &self,
        path: &str,
        validate: Option<section::Validate<T>>,
        known: Option<section::Known>,
    ) -> Result<Section<T>, ConfigError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        if !path.is_empty() {
            split_path(path)?;
        }
        // No change in between: the section starts from what it checked.
        let layers = self.inner.layers.lock();
        let merged = self.inner.merged.load();
        let (section, slot) =
            section::register(path, validate, known, &merged, &self.sources(&layers))?;
        self.inner.sections.write().push(slot);
        Ok(section)
    }

    /// Where the value at `path` comes from (for an error). Not waiting
    /// long for the layers: a read inside a section's validation holds
    /// them.
    fn origin_of(&self, path: &str) -> String {
        // Held for long only by this thread (a validation reading the
        // config): then it is the change being applied.
        match self
            .inner
            .layers
            .try_lock_for(std::time::Duration::from_millis(100))
        {
            Some(layers) => self.sources(&layers).describe(path),
            None => "a change being applied".to_owned(),
        }
    }

    fn sources<'a>(&'a self, layers: &'a Layers) -> section::Sources<'a> {
        section::Sources {
            layers,
            file: self.inner.file.as_deref(),
            env_prefix: self.inner.env_prefix.as_deref(),
        }
    }

    /// Makes `next` the config, if every registered section reads from
    /// it; the new merged view.
    fn commit(&self, layers: &mut Layers, next: Layers) -> Result<Arc<Table>, ConfigError> {
        let merged = next.merged();
        let sections = self.inner.sections.read();
        let mut checked = Vec::with_capacity(sections.len());
        {
            let sources = self.sources(&next);
            for slot in sections.iter() {
                checked.push((slot.clone(), slot.check(&merged, &sources)?));
            }
        }
        *layers = next;
        let merged = Arc::new(merged);
        self.inner.merged.store(merged.clone());
        for (slot, value) in checked {
            slot.store(value);
        }
        Ok(merged)
    }

    /// Sets `path` in the runtime layer (the top one), creating tables on
    /// the way, here and (through [`SET_EVENT`]) in the service's other
    /// processes. In each process whose merged value changed, notifies
    /// `config:<path>` with a [`ConfigChange`], local-only. An error, and
    /// no change anywhere, when the value would break a registered
    /// [section](Self::section), or the path is beyond the limits.
    pub fn set(&self, path: &str, value: impl Serialize) -> Result<(), ConfigError> {
        let value = Value::try_from(value).map_err(|e| ConfigError::Value {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        self.change(path, Some(value), None)?;
        count(&STATS.sets);
        Ok(())
    }

    /// Removes `path` from the runtime layer, here and in the service's
    /// other processes, so the file (or env, or defaults) shows through
    /// again. Notifies like [`set`](Self::set) when the merged value
    /// changed. Returns whether there was a runtime value.
    pub fn unset(&self, path: &str) -> Result<bool, ConfigError> {
        let had = self.change(path, None, None)?;
        count(&STATS.sets);
        Ok(had)
    }

    /// A set (`Some`) or unset (`None`), made here (`remote` is `None`:
    /// stamped now and broadcast) or in another process (under its stamp,
    /// which decides whether it wins). Returns whether the runtime layer
    /// had a value at `path` before.
    fn change(
        &self,
        path: &str,
        value: Option<Value>,
        remote: Option<Stamp>,
    ) -> Result<bool, ConfigError> {
        let keys = split_path(path)?;
        if let Some(value) = &value {
            check_value_depth(path, keys.len(), value)?;
        }
        if let Some(stamp) = remote {
            // A clock far ahead would freeze the path everywhere (and
            // overflow the clock): refused.
            if stamp.clock > layers::now_ns().saturating_add(MAX_CLOCK_AHEAD_NS)
                && stamp.origin != layers::FILE_ORIGIN
            {
                return Err(ConfigError::Value {
                    path: path::shorten(path),
                    message: "stamped more than an hour ahead of this host's clock".to_owned(),
                });
            }
        }
        let mut layers = self.inner.layers.lock();
        let old_merged = self.inner.merged.load_full();
        // Here a set through a scalar is a mistake to report; from another
        // process, where a newer set may have made that scalar a table,
        // the stamps decide.
        if value.is_some() && remote.is_none() {
            layers::check_tables_on_the_way(&old_merged, &keys, path)?;
            layers::check_tables_on_the_way(&layers.runtime, &keys, path)?;
        }
        if remote.is_some()
            && !layers.entries.contains_key(path)
            && layers.entries.len() >= MAX_ENTRIES
        {
            return Err(ConfigError::Value {
                path: path::shorten(path),
                message: format!("already {MAX_ENTRIES} runtime paths: no more are taken"),
            });
        }
        let had = lookup(&layers.runtime, path).is_some();
        let mut next = layers.clone();
        let stamp = match remote {
            Some(stamp) => stamp,
            None => next.tick(self.inner.origin),
        };
        if !next.apply(path, &keys, value.clone(), stamp) {
            if remote.is_none() {
                // Only a clock pushed to its end gets here.
                return Err(ConfigError::Value {
                    path: path::shorten(path),
                    message: "a newer change of this path wins".to_owned(),
                });
            }
            tracing::debug!(path = %path::shorten(path), "ignoring an older config set from another process");
            return Ok(had);
        }
        let merged = self.commit(&mut layers, next)?;
        if remote.is_none() {
            self.broadcast(path, value.clone(), stamp);
        } else if stamp.origin == layers::FILE_ORIGIN && had {
            // Another process read the edit first: the same line as ours.
            tracing::info!(
                path = %path::shorten(path),
                "the file's new value of `{}` replaced the one set at run time (the edit is newer)",
                path::shorten(path)
            );
        }
        let source = if value.is_some() {
            ChangeSource::Set
        } else {
            ChangeSource::Unset
        };
        self.publish(&old_merged, &merged, path, source);
        Ok(had)
    }

    fn publish(&self, old_merged: &Table, merged: &Table, path: &str, source: ChangeSource) {
        let old = lookup(old_merged, path).cloned();
        let new = lookup(merged, path).cloned();
        if old != new {
            log_change(path, old.as_ref(), new.as_ref());
            if let Some(bus) = &self.inner.bus {
                let change = ConfigChange {
                    path: path.to_owned(),
                    old,
                    new,
                    source,
                };
                bus.notify_local(format!("config:{path}"), change);
            }
        }
    }

    /// Reads the file and the environment again. On success, notifies one
    /// local-only `config:<leaf>` per changed leaf. On error (invalid TOML,
    /// a registered [section](Self::section) broken, an unreadable or
    /// missing file) the old config stays, the error is logged and
    /// returned, and [`RELOAD_FAILED_EVENT`] is notified.
    ///
    /// A key whose value in the file changed, and that a runtime `set`
    /// made before the file was modified overrides, takes the file's value
    /// (logged): the newest intent wins.
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.reload_with(false)
    }

    /// [`reload`](Self::reload), forgetting every runtime set in the same
    /// step when `clear_sets` (a [`crate::testing`] service's fresh start).
    pub(crate) fn reload_with(&self, clear_sets: bool) -> Result<(), ConfigError> {
        let Some(file) = &self.inner.file else {
            return Err(ConfigError::NoFile);
        };
        let _one_at_a_time = self.inner.reload_lock.lock();
        let (table, modified, text) = match layers::read_file(file, false) {
            Ok(read) => read,
            Err(error) => return Err(self.reload_failed(file, error)),
        };
        let mut layers = self.inner.layers.lock();
        let mut next = layers.clone();
        let old_file = std::mem::replace(&mut next.file, table);
        next.file_text = text;
        if clear_sets {
            next.runtime = Table::new();
            next.entries.clear();
            for slot in self.inner.sections.read().iter() {
                slot.forget_warnings();
            }
        }
        if let Some(prefix) = &self.inner.env_prefix {
            next.env = layers::read_env(prefix);
        }
        // An edit is dated by the file's modification time, but never later
        // than now (a future mtime would outrank every set to come).
        let modified = modified.min(layers::now_ns());
        let replaced = if old_file == next.file {
            Vec::new()
        } else {
            next.file_wins(&old_file, modified)
        };
        let old = self.inner.merged.load_full();
        let merged = match self.commit(&mut layers, next) {
            Ok(merged) => merged,
            Err(error) => {
                drop(layers);
                return Err(self.reload_failed(file, error));
            }
        };
        drop(layers);
        *self.inner.last_failure.lock() = None;
        let edit = Stamp {
            clock: modified,
            origin: layers::FILE_ORIGIN,
        };
        for path in &replaced {
            // Every process decides this from its own reading of the file,
            // and readings can differ (a write caught half-way, edits a
            // debounce merged): the decision travels, so all agree.
            self.broadcast(path, None, edit);
            tracing::info!(
                %path,
                file = %file.display(),
                "the file's new value of `{path}` replaced the one set at run time (the edit is newer)"
            );
        }
        let (old_leaves, new_leaves) = (layers::leaves(&old), layers::leaves(&merged));
        let mut changed: Vec<&String> = old_leaves
            .keys()
            .chain(new_leaves.keys())
            .filter(|path| old_leaves.get(*path) != new_leaves.get(*path))
            .collect();
        changed.sort();
        changed.dedup();
        count(&STATS.reloads);
        tracing::info!(file = %file.display(), changed = changed.len(), "config reloaded");
        for path in changed {
            let (old, new) = (old_leaves.get(path).copied(), new_leaves.get(path).copied());
            log_change(path, old, new);
            if let Some(bus) = &self.inner.bus {
                let change = ConfigChange {
                    path: path.clone(),
                    old: old.cloned(),
                    new: new.cloned(),
                    source: ChangeSource::Reload,
                };
                bus.notify_local(format!("config:{path}"), change);
            }
        }
        Ok(())
    }

    /// Logs a failed reload and notifies [`RELOAD_FAILED_EVENT`], once per
    /// distinct failure (a watcher retrying the same one stays quiet).
    fn reload_failed(&self, file: &Path, error: ConfigError) -> ConfigError {
        count(&STATS.reload_failures);
        let text = error.to_string();
        let mut last = self.inner.last_failure.lock();
        if last.as_deref() == Some(text.as_str()) {
            tracing::debug!(%error, "config reload failed again; keeping the previous config");
            return error;
        }
        *last = Some(text);
        drop(last);
        if crate::identity::role() == crate::identity::Role::Worker {
            // Its supervisor reads the same file and says it at ERROR: one
            // line for the service, not one per process.
            tracing::debug!(%error, "config reload failed; keeping the previous config (the supervisor reports it)");
        } else {
            tracing::error!(%error, "config reload failed; keeping the previous config");
        }
        if let Some(bus) = &self.inner.bus {
            let failure = ReloadFailure {
                file: file.to_owned(),
                error: error.to_string(),
            };
            bus.notify_local(RELOAD_FAILED_EVENT, failure);
        }
        error
    }

    /// Starts reloading the file when it changes, with the default
    /// [`Reloader`] (inotify, or polling where that fails). Idempotent.
    /// A file that is deleted is reported (the old config stays) and read
    /// again when it comes back; a reload that failed for a reason other
    /// than the file's content is tried again.
    pub fn watch(&self) -> Result<(), ConfigError> {
        let file = self.inner.file.clone().ok_or(ConfigError::NoFile)?;
        let mut slot = self.inner.reloader.lock();
        if slot.is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(&self.inner);
        let reloader = Reloader::new(&file, move |_: &Path| {
            let Some(inner) = weak.upgrade() else {
                return Ok(());
            };
            match (Config { inner }).reload() {
                Ok(()) => Ok(()),
                // The content is wrong, or the file is gone: logged, and
                // nothing to try again until it changes.
                Err(ConfigError::Parse { .. } | ConfigError::Invalid { .. }) => Ok(()),
                Err(ConfigError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    Ok(())
                }
                // Logged too; the watcher tries again.
                Err(error) => Err(error.to_string()),
            }
        })
        .map_err(|source| ConfigError::Watch {
            file: file.clone(),
            source,
        })?;
        *slot = Some(reloader);
        drop(slot);
        // An edit between the first read and the watcher's start would
        // otherwise be its baseline and never applied: catch up once (this
        // notifies nothing if the file is unchanged).
        if file.exists() {
            let _ = self.reload();
        }
        Ok(())
    }

    /// Stops watching the file.
    pub fn unwatch(&self) {
        self.inner.reloader.lock().take();
    }
}
