//! Runtime sets across processes: the set event, stamps, and the sync a
//! late or rejoining process asks for.

use std::sync::Weak;

use serde::{Deserialize, Serialize};
use toml::Value;

use super::layers::{lookup, Stamp};
use super::path::shorten;
use super::{Config, ConfigError, Inner};
use crate::event;

/// The event that carries a runtime [`set`](Config::set) or
/// [`unset`](Config::unset) to the service's other processes; its payload is
/// a [`ConfigSet`]. Configs apply it from other processes (see
/// [`ConfigBuilder::follow_remote_sets`](super::ConfigBuilder::follow_remote_sets));
/// handlers rarely need it.
pub const SET_EVENT: &str = "config_set";

/// The event a process that joins late (or rejoins after an outage)
/// notifies (no payload): every other process answers by re-sending its
/// runtime sets as [`SET_EVENT`]s, oldest first, with their original
/// stamps, so the newcomer agrees with the rest.
pub const SYNC_EVENT: &str = "config_sync";

/// Whether `name` is one of the config's own events ([`SET_EVENT`],
/// [`SYNC_EVENT`]). Links never drop these for want of room, in either
/// direction: a lost set would leave processes disagreeing for good, and
/// they are few (one per runtime set, or per process at a rejoin).
pub(crate) fn is_control_event(name: &str) -> bool {
    name == SET_EVENT || name == SYNC_EVENT
}

/// The payload of [`SET_EVENT`]: the value written to the runtime layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigSet {
    /// The path set.
    pub path: String,
    /// The value written, or `None` for an unset.
    pub value: Option<Value>,
    /// A hybrid logical clock (nanoseconds of wall-clock time, moved past
    /// every stamp seen): of two sets of one path, the one with the higher
    /// `(clock, origin)` wins in every process, whatever order they arrive
    /// in, so concurrent sets cannot leave processes disagreeing. A set of
    /// a table decides the paths beneath it, unless they are newer.
    #[serde(default)]
    pub clock: u64,
    /// A random number per config: the clock's tie-break. (`u64::MAX`
    /// marks a value the file took back from the runtime layer.)
    #[serde(default)]
    pub origin: u64,
}

impl ConfigSet {
    fn stamp(&self) -> Stamp {
        Stamp {
            clock: self.clock,
            origin: self.origin,
        }
    }
}

/// Applies other processes' sets and answers their sync requests (an
/// inbound hook: before the event's handlers run).
pub(crate) fn apply_remote(weak: &Weak<Inner>, event: &event::Event) {
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
    let path = shorten(&set.path);
    match (Config { inner }).apply_stamped(set) {
        Ok(()) => tracing::debug!(%path, "applied a config set from another process"),
        Err(error) => tracing::warn!(%error, "ignoring a config set from another process"),
    }
}

impl Config {
    /// Applies a set or unset made in another process, under its stamp.
    pub(crate) fn apply_stamped(&self, set: ConfigSet) -> Result<(), ConfigError> {
        let stamp = set.stamp();
        self.change(&set.path, set.value, Some(stamp)).map(drop)
    }

    /// This process's runtime sets and unsets with their stamps, oldest
    /// first, as TOML: handed to a worker process that starts later, so
    /// it agrees with the others from its first request.
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) fn export_sets(&self) -> String {
        #[derive(Serialize)]
        struct Sets {
            set: Vec<ConfigSet>,
        }
        // An environment string is at most 128 KiB: past a bound, hand
        // down the sets with values only, then nothing (the worker's
        // sync at start-up brings the rest).
        const BOUND: usize = 64 << 10;
        let all = self.stamped_sets();
        let text = toml::to_string(&Sets { set: all.clone() }).unwrap_or_default();
        if text.len() <= BOUND {
            return text;
        }
        let values: Vec<ConfigSet> = all.into_iter().filter(|s| s.value.is_some()).collect();
        let text = toml::to_string(&Sets { set: values }).unwrap_or_default();
        if text.len() <= BOUND {
            return text;
        }
        tracing::warn!(
            bytes = text.len(),
            "too many runtime config sets to hand to a worker at start; it asks for them instead"
        );
        String::new()
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
        let mut sets: Sets = toml::from_str(text).map_err(|e| ConfigError::Value {
            path: "(runtime sets)".to_owned(),
            message: e.to_string(),
        })?;
        sets.set.sort_by_key(ConfigSet::stamp);
        let mut applied = 0;
        for set in sets.set {
            match self.apply_stamped(set) {
                Ok(()) => applied += 1,
                Err(error) => tracing::warn!(%error, "ignoring a handed-down config set"),
            }
        }
        Ok(applied)
    }

    /// Asks the service's other processes for their runtime sets (see
    /// [`SYNC_EVENT`]); the answers arrive like any remote set.
    pub fn request_sync(&self) {
        if let Some(bus) = &self.inner.bus {
            bus.notify(SYNC_EVENT, ());
        }
    }

    /// Every runtime set and unset this process knows, with its stamp,
    /// oldest first.
    fn stamped_sets(&self) -> Vec<ConfigSet> {
        let layers = self.inner.layers.lock();
        let mut sets: Vec<ConfigSet> = layers
            .entries
            .iter()
            .map(|(path, stamp)| ConfigSet {
                path: path.clone(),
                value: lookup(&layers.runtime, path).cloned(),
                clock: stamp.clock,
                origin: stamp.origin,
            })
            .collect();
        sets.sort_by_key(ConfigSet::stamp);
        sets
    }

    /// Re-sends every runtime set and unset this process knows, oldest
    /// first, stamps unchanged (receivers that have them ignore them).
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
    pub(crate) fn broadcast(&self, path: &str, value: Option<Value>, stamp: Stamp) {
        if let Some(bus) = &self.inner.bus {
            let set = ConfigSet {
                path: path.to_owned(),
                value,
                clock: stamp.clock,
                origin: stamp.origin,
            };
            bus.notify(SET_EVENT, set);
        }
    }
}
