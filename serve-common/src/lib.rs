//! # serve-common
//!
//! The boring parts of a web service, done well once. This crate is the Rust
//! counterpart of the Python `serve-common` (falcon + gunicorn): a module per
//! module of the Python original, with proc macros doing what Python decorators did.
//!
//! | module | what it gives you |
//! |---|---|
//! | [`cached`](mod@cached) | cached properties: [`#[derive(Cached)]`](derive@Cached), [`#[cached]`](macro@cached) |
//! | [`event`] | an event bus: [`notify`](event::notify), [`register`](event::register), [`#[on_event]`](macro@on_event), waits and acknowledgements; across processes over IPC, across machines over NATS (feature `nats`) |
//! | [`config`] | layered, typed, hot-reloaded configuration from `config.toml` |
//! | [`default::actix`] | the web service: one call builds the app (request ids, timer, JSON errors, OpenAPI), [`serve`](default::actix::serve) runs it, with worker processes |
//! | [`default::management`] | `/`, `/manage/spec`, `/manage/version`, `/manage/health`, `/manage/logging/*`, `/manage/docs/` |
//! | [`request_id`] | the `X-Request-Id` middleware and the task-local id in every log line |
//! | [`main`] | `#[serve_common::main]`: the start-up and teardown around `async fn main` |
//! | [`default::logging`] | the subscriber: the original's line format, files rotated by size, levels from config |
//! | [`log_util`] | [`#[time_and_log]`](macro@time_and_log) and its guard form |
//! | [`ipc`] | a group server process: messages, and events and config, across the service's processes |
//! | [`reloading`] | file watchers: inotify with a safety poll, or plain polling |
//! | [`prelude`] | the glob import (the Python original's `export` module) |
//! | `testing` | feature `testing`: your service started in a test, with an HTTP client, captured logs and waits |
//!
//! ```no_run
//! use serve_common::prelude::*;
//!
//! #[on_event("config:greeting.*")]
//! fn greeting_changed(event: &str, change: &ConfigChange) {
//!     tracing::info!(%event, %change, "greeting changed");
//! }
//!
//! fn main() -> Result<(), serve_common::config::ConfigError> {
//!     serve_common::event::initialize();
//!     let config = serve_common::config::init(Config::builder().watch(true))?;
//!     let name: String = config.get_or("greeting.name", "world".to_owned());
//!     println!("hello, {name}");
//!     Ok(())
//! }
//! ```
//!
//! ## Under another name
//!
//! The macros' generated code names this crate `::serve_common`. With the
//! dependency renamed in `Cargo.toml` (`sc = { package = "serve-common", .. }`),
//! or re-exported by another crate, tell each macro where it is with
//! `crate = "path"`: `#[on_event("x", crate = "sc")]`,
//! `#[time_and_log("m", crate = "sc")]`, `#[sc::main(crate = "sc")]`,
//! `#[cached(crate = "sc")]` on the impl block and `#[cache(crate = "sc")]`
//! on a `#[derive(Cached)]` struct.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::print_stdout)]

pub mod cached;
pub mod config;
pub mod default;
pub mod event;
mod identity;
pub mod ipc;
pub mod log_util;
#[cfg(feature = "tokio")]
mod main_entry;
#[cfg(feature = "metrics")]
pub mod metrics;
mod outcome;
pub mod prelude;
pub mod reloading;
#[cfg(feature = "actix")]
pub mod request_id;
#[cfg(feature = "otel")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "actix")]
pub mod trace_context;

#[doc(hidden)]
pub mod __private;

/// A random number: std's `RandomState` (seeded from the operating
/// system's randomness) over the pid and the clock, so it differs across
/// processes, hosts and restarts (containers share pids).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

pub use outcome::HandlerOutcome;

/// Registers a free function as an event handler at start-up.
///
/// ```
/// use serve_common::prelude::*;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { id: u64 }
///
/// // The event name, then the payload; either may be left out.
/// #[on_event("job.*.done")]
/// fn job_done(event: &str, job: &Job) {
///     tracing::info!(%event, id = job.id, "job finished");
/// }
///
/// // Options: `once` (run for the first matching event only),
/// // `ack` / `ack = "name"` (notify `completed:<event>` or `name` after it
/// // ran), `supervisor` (run in the supervisor process too) and
/// // `one_per_service` (run in one process of the service per event),
/// // `crate = "path"` (serve-common under another name).
/// #[on_event("re:shutdown|stop", once, ack)]
/// fn on_stop() -> Result<(), String> {
///     Ok(())
/// }
///
/// // A work queue: each job runs in one process, whichever it is.
/// #[on_event("job.submitted", one_per_service)]
/// fn run_job(job: &Job) {
///     tracing::info!(id = job.id, "running the job");
/// }
/// ```
///
/// The pattern is a string literal with the syntax of
/// [`EventPattern::parse`](event::EventPattern::parse): an exact name, a glob
/// (`*`, `?`, `[..]`, `{a,b}`), or a regex after `re:` that must match the
/// whole name. Parameters are `&str` (the event name, first) and/or `&T`
/// (the payload, `T: DeserializeOwned`). The function may return `()` or
/// `Result<(), E>` with `E: Display`; an `Err` or a panic is logged with the
/// event name and the bus goes on.
///
/// It runs in every process of the service that handles requests: with
/// `server.processes = N`, once in each of the N workers and not in their
/// supervisor, unless it says `supervisor`. See [which processes run
/// handlers](event#which-processes-run-handlers). With `one_per_service`
/// it runs in one of them per event (see [one per
/// service](event#one-per-service)).
///
/// Handlers are collected with `inventory` and registered on the global bus
/// ([`event::bus`]) when it is first used. A crate that only contains
/// handlers must still be linked into the binary (reference one of its items
/// from `main`, or `use my_handlers as _;`), otherwise the linker drops it.
pub use serve_common_macros::on_event;

/// Turns the `#[cached]` methods of an `impl` block into cached
/// properties; see the [`cached`](mod@cached) module.
pub use serve_common_macros::cached;

/// Finds the cache slot of a struct and generates the setters of its
/// `#[input]` fields; see the [`cached`](mod@cached) module.
pub use serve_common_macros::Cached;

/// Names what a `#[cached]` method reads, inside a `#[cached]` impl block
/// (which reads and removes it); see the [`cached`](mod@cached) module.
/// Anywhere else it is a compile error saying where it goes.
pub use serve_common_macros::dependency;

/// Makes a `&mut self` method the setter of a property or of an
/// `#[input]` field, inside a `#[cached]` impl block (which reads and
/// removes it); see the [`cached`](mod@cached) module. Anywhere else it is
/// a compile error saying where it goes.
pub use serve_common_macros::setter;

/// Puts an attribute on the computation of a cached property instead of
/// its getter, inside a `#[cached]` impl block:
/// `#[compute(time_and_log("index built"))]` times the computation, not
/// every cache hit. See the [`cached`](mod@cached) module.
pub use serve_common_macros::compute;

/// The README's examples, compiled as doc tests so they stay true (with
/// the `testing` feature, which its "Testing your service" example needs;
/// `cargo test --workspace` has it, and `tests/readme` compiles them too).
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Times a function and logs `<message>: <N> ns` at DEBUG; see
/// [`log_util`]. Options: `level = "info"`, `crate = "path"`
/// (serve-common under another name).
pub use serve_common_macros::time_and_log;

/// Sets the service up around `async fn main`: the two-stage start-up of
/// the original's example app, done for you.
///
/// ```no_run
/// #[serve_common::main]
/// async fn main() -> std::io::Result<()> {
///     tracing::info!(greeting = %serve_common::config::config().get_or("greeting", "hi".to_owned()), "started");
///     Ok(())
/// }
/// ```
///
/// In order: if this process was started as the IPC server, it serves and
/// never reaches the body ([`ipc::run_server_if_requested`]); the config is
/// loaded (`SERVE_COMMON_CONFIG`, else `config = "path"` (a literal, or
/// `concat!`/`env!`), else `config.toml`) and watched; logging goes to
/// stderr (unless config `logging.stderr = false`) and to the file of
/// config `logging.file`, if any (under `logging.logs_dir`, rotated at
/// `logging.max_bytes`, keeping `logging.keep` files, JSON lines if
/// `logging.json`), with levels from config; the application's
/// `CARGO_PKG_VERSION` becomes `/manage/version`'s default; the event bus starts; IPC is set up (a server is started
/// when no `SERVCOM_IPC_ADDR` is inherited) and carries events; the body
/// runs on the actix runtime. Afterwards the IPC server this process
/// started is shut down and the logs are flushed. A config or IPC failure
/// at start-up is printed and exits with status 1.
///
/// Options: `config = "path"`, `ipc = false`, `logging = false`, `crate =
/// "path"` (serve-common under another name). The
/// application needs no direct tokio or actix-rt dependency. (With the
/// `actix` feature off, the body runs on a tokio runtime.)
pub use serve_common_macros::main;
