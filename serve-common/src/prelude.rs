//! The glob import: `use serve_common::prelude::*;`.
//!
//! This is the Python original's `export` module. In Rust, `pub` already is the export
//! list; a prelude gathers what a service uses every day.

/// The crates apistos' and schemars' derives name in their expansions
/// (`apistos::...`, `schemars::...`): with the glob import in scope, a
/// service needs no direct dependency on either.
#[cfg(feature = "actix")]
pub use crate::__private::{apistos, schemars};
pub use crate::cached::Cache;
pub use crate::config::{config, ChangeSource, Config, ConfigChange};
#[cfg(feature = "actix")]
pub use crate::default::actix::{api_operation, ApiComponent, ApiError, JsonSchema, StatusCode};
pub use crate::event::{Event, EventBus, EventPattern, Registration};
pub use crate::on_event;
pub use crate::reloading::Reloader;
pub use crate::time_and_log;
pub use crate::HandlerOutcome;
pub use crate::{cached, compute, dependency, setter, Cached};
/// The `metrics` facade's macros: what they record is in `/manage/metrics`.
pub use ::metrics::{counter, gauge, histogram};
/// The logging macros (`tracing::info!(..)` with the glob import in
/// scope): a service needs no direct dependency on `tracing`.
pub use ::tracing;
pub use serde::{Deserialize, Serialize};
