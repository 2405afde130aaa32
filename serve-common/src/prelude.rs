//! The glob import: `use serve_common::prelude::*;`.
//!
//! This is the seed's `export` module. In Rust, `pub` already is the export
//! list; a prelude gathers what a service uses every day.

pub use crate::cached::Cache;
pub use crate::config::{config, ChangeSource, Config, ConfigChange};
pub use crate::event::{Event, EventBus, EventPattern, Registration};
pub use crate::on_event;
pub use crate::reloading::Reloader;
pub use crate::time_and_log;
pub use crate::HandlerOutcome;
pub use crate::{cached, Cached};
