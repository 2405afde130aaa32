//! Who this service and this process are: its name and version, and the
//! process's place in a service of worker processes. Below every other
//! module, so that each can ask without importing the one that sets it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use parking_lot::RwLock;

static APP_NAME: OnceLock<&'static str> = OnceLock::new();
static VERSION: RwLock<Option<String>> = RwLock::new(None);
static DEFAULT_VERSION: RwLock<Option<&'static str>> = RwLock::new(None);

/// Records the application's crate name and version
/// (`#[serve_common::main]` does, with its `CARGO_PKG_NAME` and
/// `CARGO_PKG_VERSION`).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn set_application(name: &'static str, version: &'static str) {
    let _ = APP_NAME.set(name);
    *DEFAULT_VERSION.write() = Some(version);
}

/// The application's crate name (from `#[serve_common::main]`), else the
/// executable's name.
#[cfg_attr(
    not(any(feature = "actix", feature = "nats", feature = "otel")),
    allow(dead_code)
)]
pub(crate) fn app_name() -> String {
    if let Some(name) = APP_NAME.get() {
        return (*name).to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "service".to_owned())
}

/// Sets the version the service reports, over the application's.
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
pub(crate) fn set_version(version: String) {
    *VERSION.write() = Some(version);
}

/// The version the service reports: the one set, else the application
/// crate's, else `unknown`.
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
pub(crate) fn version() -> String {
    if let Some(version) = VERSION.read().clone() {
        return version;
    }
    DEFAULT_VERSION.read().unwrap_or("unknown").to_owned()
}

/// A process alone, or the supervisor, or a worker of a service of worker
/// processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Not part of a service of worker processes (yet).
    Alone,
    /// Supervises worker processes.
    Supervisor,
    /// Serves under a supervisor.
    Worker,
}

static ROLE: AtomicU8 = AtomicU8::new(0);

/// Records this process's role (the supervisor and its workers do, as they
/// start).
#[cfg_attr(not(feature = "actix"), allow(dead_code))]
pub(crate) fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Release);
}

/// This process's role.
pub(crate) fn role() -> Role {
    match ROLE.load(Ordering::Acquire) {
        1 => Role::Supervisor,
        2 => Role::Worker,
        _ => Role::Alone,
    }
}
