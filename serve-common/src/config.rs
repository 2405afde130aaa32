//! Configuration: layered, typed, hot-reloaded. The seed's `config` module.
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
//! the four; a reload recomputes it, so a runtime `set` survives an
//! unrelated edit of the file. Tables merge key by key; any other value
//! replaces what is below it.
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
//! A bad file on reload is logged and the old config kept; the next good
//! edit applies with its events. Values under keys that look secret
//! (`password`, `secret`, `token`, `key`, `credential`) are redacted in
//! the change log lines.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::event::{self, EventBus};
use crate::reloading::Reloader;

/// The environment variable that names the global config's file
/// (default: `config.toml` in the working directory).
pub const CONFIG_PATH_ENV: &str = "SERVE_COMMON_CONFIG";

/// The local-only event notified when a reload fails (the old config
/// stays); its payload is a [`ReloadFailure`].
pub const RELOAD_FAILED_EVENT: &str = "config_reload_failed";

/// The payload of [`RELOAD_FAILED_EVENT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// The config file.
    pub file: PathBuf,
    /// Why it was not applied.
    pub error: String,
}

/// The event that carries a runtime [`set`](Config::set) or
/// [`unset`](Config::unset) to the service's other processes; its payload is
/// a [`ConfigSet`]. Configs apply it from other processes (see
/// [`ConfigBuilder::follow_remote_sets`]); handlers rarely need it.
pub const SET_EVENT: &str = "config_set";

/// The event a process that joins late notifies (no payload): every other
/// process answers by re-sending its runtime sets as [`SET_EVENT`]s, with
/// their original stamps, so the newcomer agrees with the rest.
pub const SYNC_EVENT: &str = "config_sync";

/// The payload of [`SET_EVENT`]: the value written to the runtime layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigSet {
    /// The path set.
    pub path: String,
    /// The value written, or `None` for an unset.
    pub value: Option<Value>,
    /// A Lamport clock: of two sets of one path, the one with the higher
    /// `(clock, origin)` wins in every process, whatever order they arrive
    /// in, so concurrent sets cannot leave processes disagreeing.
    #[serde(default)]
    pub clock: u64,
    /// The pid of the process that set it (the clock's tie-break).
    #[serde(default)]
    pub origin: u32,
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
    #[error("config value at `{path}` is not a valid `{expected}`: {message}")]
    Type {
        /// The path asked for.
        path: String,
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
    /// The path is not dot-separated keys.
    #[error("invalid config path `{path}`: empty key")]
    BadPath {
        /// The path.
        path: String,
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

#[derive(Default, Clone)]
struct Layers {
    defaults: Table,
    file: Table,
    env: Table,
    runtime: Table,
    /// The Lamport clock of runtime sets, and the winning stamp per path.
    clock: u64,
    stamps: std::collections::HashMap<String, (u64, u32)>,
}

impl Layers {
    fn merged(&self) -> Table {
        let mut out = self.defaults.clone();
        for layer in [&self.file, &self.env, &self.runtime] {
            merge_into(&mut out, layer);
        }
        out
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
        insert_path(&mut self.defaults, &keys, value.into());
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
            Some(file) => read_file(file, true)?,
            None => Table::new(),
        };
        let env = self.env_prefix.as_deref().map(read_env).unwrap_or_default();
        let layers = Layers {
            defaults: self.defaults,
            file: file_table,
            env,
            runtime: Table::new(),
            clock: 0,
            stamps: Default::default(),
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
            }),
        };
        if let (true, Some(bus)) = (self.follow_remote, &config.inner.bus) {
            let weak = Arc::downgrade(&config.inner);
            bus.add_inbound_hook(move |event| apply_remote(&weak, event));
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

fn apply_remote(weak: &Weak<Inner>, event: &event::Event) {
    if event.name() != SET_EVENT && event.name() != SYNC_EVENT {
        return;
    }
    let Some(inner) = weak.upgrade() else {
        return;
    };
    if event.name() == SYNC_EVENT {
        Config { inner }.resend_sets();
        return;
    }
    let set = match event.payload::<ConfigSet>() {
        Ok(set) => set.into_owned(),
        Err(error) => {
            tracing::warn!(%error, "ignoring a config set from another process");
            return;
        }
    };
    let path = set.path.clone();
    match (Config { inner }).apply_stamped(set) {
        Ok(()) => tracing::debug!(%path, "applied a config set from another process"),
        Err(error) => tracing::warn!(%error, "ignoring a config set from another process"),
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

    /// Sets `path` in the runtime layer (the top one), creating tables on
    /// the way, here and (through [`SET_EVENT`]) in the service's other
    /// processes. In each process whose merged value changed, notifies
    /// `config:<path>` with a [`ConfigChange`], local-only.
    pub fn set(&self, path: &str, value: impl Serialize) -> Result<(), ConfigError> {
        let value = Value::try_from(value).map_err(|e| ConfigError::Value {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        self.apply_set(path, value, None)
    }

    /// Stamps a local change (`remote` is `None`) or decides whether a
    /// remote one wins over what this process has for `path`.
    fn stamp(layers: &mut Layers, path: &str, remote: Option<(u64, u32)>) -> Option<(u64, u32)> {
        let stamp = match remote {
            None => (layers.clock + 1, std::process::id()),
            Some(stamp) if stamp > layers.stamps.get(path).copied().unwrap_or_default() => stamp,
            Some(_) => return None,
        };
        layers.clock = layers.clock.max(stamp.0);
        layers.stamps.insert(path.to_owned(), stamp);
        Some(stamp)
    }

    fn apply_set(
        &self,
        path: &str,
        value: Value,
        remote: Option<(u64, u32)>,
    ) -> Result<(), ConfigError> {
        let keys = split_path(path)?;
        let mut layers = self.inner.layers.lock();
        let old_merged = self.inner.merged.load_full();
        check_tables_on_the_way(&old_merged, &keys, path)?;
        check_tables_on_the_way(&layers.runtime, &keys, path)?;
        let Some(stamp) = Self::stamp(&mut layers, path, remote) else {
            tracing::debug!(%path, "ignoring an older config set from another process");
            return Ok(());
        };
        insert_path(&mut layers.runtime, &keys, value.clone());
        if remote.is_none() {
            self.broadcast(path, Some(value), stamp);
        }
        self.publish(&layers, &old_merged, path, ChangeSource::Set);
        Ok(())
    }

    /// This process's runtime sets and unsets with their stamps, as TOML:
    /// handed to a worker process that starts later, so it agrees with
    /// the others from its first request.
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) fn export_sets(&self) -> String {
        #[derive(Serialize)]
        struct Sets {
            set: Vec<ConfigSet>,
        }
        let mut set = self.stamped_sets();
        set.sort_by_key(|s| (s.clock, s.origin));
        toml::to_string(&Sets { set }).unwrap_or_default()
    }

    /// Applies [`export_sets`](Self::export_sets)' output as sets from
    /// another process (stamps decide, nothing is re-broadcast).
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) fn import_sets(&self, text: &str) -> Result<usize, ConfigError> {
        #[derive(Deserialize)]
        struct Sets {
            #[serde(default)]
            set: Vec<ConfigSet>,
        }
        let sets: Sets = toml::from_str(text).map_err(|e| ConfigError::Value {
            path: "(runtime sets)".to_owned(),
            message: e.to_string(),
        })?;
        let mut applied = 0;
        for set in sets.set {
            match self.apply_stamped(set) {
                Ok(()) => applied += 1,
                Err(error) => tracing::warn!(%error, "ignoring a handed-down config set"),
            }
        }
        Ok(applied)
    }

    /// Applies a set or unset made in another process, under its stamp.
    fn apply_stamped(&self, set: ConfigSet) -> Result<(), ConfigError> {
        let stamp = Some((set.clock, set.origin));
        match set.value {
            Some(value) => self.apply_set(&set.path, value, stamp),
            None => self.apply_unset(&set.path, stamp).map(drop),
        }
    }

    /// Asks the service's other processes for their runtime sets (see
    /// [`SYNC_EVENT`]); the answers arrive like any remote set.
    pub fn request_sync(&self) {
        if let Some(bus) = &self.inner.bus {
            bus.notify(SYNC_EVENT, ());
        }
    }

    /// Every runtime set and unset this process knows, with its stamp.
    fn stamped_sets(&self) -> Vec<ConfigSet> {
        let layers = self.inner.layers.lock();
        layers
            .stamps
            .iter()
            .map(|(path, &(clock, origin))| ConfigSet {
                path: path.clone(),
                value: lookup(&layers.runtime, path).cloned(),
                clock,
                origin,
            })
            .collect()
    }

    /// Re-sends every runtime set and unset this process knows, stamps
    /// unchanged (receivers that have them ignore them).
    fn resend_sets(&self) {
        let sets = self.stamped_sets();
        if let Some(bus) = &self.inner.bus {
            for set in sets {
                bus.notify(SET_EVENT, set);
            }
        }
    }

    /// Sends a runtime change to the service's other processes (through the
    /// bus's transport), which apply it to their own runtime layer.
    fn broadcast(&self, path: &str, value: Option<Value>, (clock, origin): (u64, u32)) {
        if let Some(bus) = &self.inner.bus {
            let set = ConfigSet {
                path: path.to_owned(),
                value,
                clock,
                origin,
            };
            bus.notify(SET_EVENT, set);
        }
    }

    /// Removes `path` from the runtime layer, so the file (or env, or
    /// defaults) shows through again. Notifies like [`set`](Self::set) when
    /// the merged value changed. Returns whether there was a runtime value.
    pub fn unset(&self, path: &str) -> Result<bool, ConfigError> {
        self.apply_unset(path, None)
    }

    fn apply_unset(&self, path: &str, remote: Option<(u64, u32)>) -> Result<bool, ConfigError> {
        let keys = split_path(path)?;
        let mut layers = self.inner.layers.lock();
        let old_merged = self.inner.merged.load_full();
        let Some(stamp) = Self::stamp(&mut layers, path, remote) else {
            return Ok(false);
        };
        let removed = remove_path(&mut layers.runtime, &keys);
        if remote.is_none() {
            self.broadcast(path, None, stamp);
        }
        if removed {
            self.publish(&layers, &old_merged, path, ChangeSource::Unset);
        }
        Ok(removed)
    }

    fn publish(&self, layers: &Layers, old_merged: &Table, path: &str, source: ChangeSource) {
        let merged = Arc::new(layers.merged());
        let old = lookup(old_merged, path).cloned();
        let new = lookup(&merged, path).cloned();
        self.inner.merged.store(merged);
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
    /// unreadable or missing file) the old config stays, the error is
    /// logged and returned, and [`RELOAD_FAILED_EVENT`] is notified.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let Some(file) = &self.inner.file else {
            return Err(ConfigError::NoFile);
        };
        let _one_at_a_time = self.inner.reload_lock.lock();
        let table = match read_file(file, false) {
            Ok(table) => table,
            Err(error) => {
                tracing::error!(%error, "config reload failed; keeping the previous config");
                if let Some(bus) = &self.inner.bus {
                    let failure = ReloadFailure {
                        file: file.clone(),
                        error: error.to_string(),
                    };
                    bus.notify_local(RELOAD_FAILED_EVENT, failure);
                }
                return Err(error);
            }
        };
        let mut layers = self.inner.layers.lock();
        layers.file = table;
        if let Some(prefix) = &self.inner.env_prefix {
            layers.env = read_env(prefix);
        }
        let merged = Arc::new(layers.merged());
        let old = self.inner.merged.swap(merged.clone());
        let (old_leaves, new_leaves) = (leaves(&old), leaves(&merged));
        let mut changed: Vec<&String> = old_leaves
            .keys()
            .chain(new_leaves.keys())
            .filter(|path| old_leaves.get(*path) != new_leaves.get(*path))
            .collect();
        changed.sort();
        changed.dedup();
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

    /// Starts reloading the file when it changes, with the default
    /// [`Reloader`] (inotify, or polling where that fails). Idempotent.
    pub fn watch(&self) -> Result<(), ConfigError> {
        let file = self.inner.file.clone().ok_or(ConfigError::NoFile)?;
        let mut slot = self.inner.reloader.lock();
        if slot.is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(&self.inner);
        let reloader = Reloader::new(&file, move |_: &Path| match weak.upgrade() {
            // The error was logged by `reload`; keep the watcher going.
            Some(inner) => Config { inner }.reload().map_err(|e| e.to_string()),
            None => Ok(()),
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

fn split_path(path: &str) -> Result<Vec<&str>, ConfigError> {
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::BadPath {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut keys = path.split('.');
    let mut value = table.get(keys.next()?)?;
    for key in keys {
        value = value.as_table()?.get(key)?;
    }
    Some(value)
}

fn check_tables_on_the_way(table: &Table, keys: &[&str], path: &str) -> Result<(), ConfigError> {
    let mut current = table;
    for (i, key) in keys[..keys.len() - 1].iter().enumerate() {
        match current.get(*key) {
            None => return Ok(()),
            Some(Value::Table(t)) => current = t,
            Some(other) => {
                return Err(ConfigError::NotATable {
                    path: path.to_owned(),
                    through: keys[..=i].join("."),
                    found: other.type_str(),
                });
            }
        }
    }
    Ok(())
}

fn insert_path(table: &mut Table, keys: &[&str], value: Value) {
    let (last, parents) = keys.split_last().expect("a path has at least one key");
    let mut current = table;
    for key in parents {
        let slot = current
            .entry(key.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        current = slot.as_table_mut().expect("made a table just above");
    }
    current.insert(last.to_string(), value);
}

fn remove_path(table: &mut Table, keys: &[&str]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(*last).is_some(),
        [first, rest @ ..] => {
            let Some(Value::Table(inner)) = table.get_mut(*first) else {
                return false;
            };
            let removed = remove_path(inner, rest);
            if removed && inner.is_empty() {
                table.remove(*first);
            }
            removed
        }
    }
}

fn merge_into(base: &mut Table, over: &Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table)) => {
                merge_into(base_table, over_table)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn leaves(table: &Table) -> BTreeMap<String, &Value> {
    fn walk<'a>(prefix: &str, table: &'a Table, out: &mut BTreeMap<String, &'a Value>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Table(inner) => walk(&path, inner, out),
                other => {
                    out.insert(path, other);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

fn read_file(file: &Path, missing_is_empty: bool) -> Result<Table, ConfigError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && missing_is_empty => {
            tracing::warn!(file = %file.display(), "config file not found; starting with an empty config");
            return Ok(Table::new());
        }
        Err(source) => {
            return Err(ConfigError::Io {
                file: file.to_owned(),
                source,
            });
        }
    };
    text.parse::<Table>().map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

fn read_env(prefix: &str) -> Table {
    let prefix = format!("{prefix}__");
    let mut table = Table::new();
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                return None;
            }
            match value.into_string() {
                Ok(value) => Some((name, value)),
                Err(_) => {
                    tracing::warn!(variable = %name, "ignoring a config variable that is not UTF-8");
                    None
                }
            }
        })
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let keys: Vec<String> = name[prefix.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            tracing::warn!(variable = %name, "ignoring a config variable with an empty key");
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        insert_path(&mut table, &keys, parse_env_value(&raw));
    }
    table
}

fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Whether a key path names a secret: any key containing `password`,
/// `passwd`, `secret`, `token` or `credential`, or ending in `key`.
pub fn is_secret_path(path: &str) -> bool {
    path.split('.').any(|key| {
        let key = key.to_ascii_lowercase();
        ["password", "passwd", "secret", "token", "credential"]
            .iter()
            .any(|word| key.contains(word))
            || key.ends_with("key")
            || key.split(['_', '-']).any(|word| word == "key")
    })
}

const REDACTED: &str = "<redacted>";

fn redact(path: &str, value: &Value) -> Value {
    if is_secret_path(path) {
        return Value::String(REDACTED.into());
    }
    match value {
        Value::Table(table) => Value::Table(
            table
                .iter()
                .map(|(k, v)| (k.clone(), redact(&format!("{path}.{k}"), v)))
                .collect(),
        ),
        // Credentials inside a URL (`nats://user:pass@host`).
        Value::String(text) if text.contains("://") && text.contains('@') => {
            Value::String(redact_url_userinfo(text))
        }
        other => other.clone(),
    }
}

/// `scheme://user:pass@host` -> `scheme://<redacted>@host`, for each
/// comma-separated URL.
pub(crate) fn redact_url_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{REDACTED}@{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn shown(path: &str, value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_owned(),
        Some(value) => redact(path, value).to_string(),
    }
}

fn log_change(path: &str, old: Option<&Value>, new: Option<&Value>) {
    tracing::info!(%path, old = %shown(path, old), new = %shown(path, new), "config changed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_redacted_deeply() {
        assert!(is_secret_path("db.password"));
        assert!(is_secret_path("api_key"));
        assert!(is_secret_path("auth.Token"));
        assert!(!is_secret_path("logging.level"));
        let table: Table = "user = \"u\"\npassword = \"p\"\n".parse().unwrap();
        let shown = shown("db", Some(&Value::Table(table)));
        assert!(
            shown.contains("<redacted>") && !shown.contains("\"p\""),
            "{shown}"
        );
    }

    #[test]
    fn env_values_read_as_toml_when_they_can() {
        assert_eq!(parse_env_value("8080"), Value::Integer(8080));
        assert_eq!(parse_env_value("true"), Value::Boolean(true));
        assert_eq!(parse_env_value("debug"), Value::String("debug".into()));
        assert_eq!(
            parse_env_value("127.0.0.1:80"),
            Value::String("127.0.0.1:80".into())
        );
    }

    #[test]
    fn merge_is_deep_for_tables_only() {
        let mut base: Table = "[a]\nx = 1\ny = 2\n".parse().unwrap();
        let over: Table = "[a]\ny = 3\n".parse().unwrap();
        merge_into(&mut base, &over);
        assert_eq!(lookup(&base, "a.x"), Some(&Value::Integer(1)));
        assert_eq!(lookup(&base, "a.y"), Some(&Value::Integer(3)));
    }
}
