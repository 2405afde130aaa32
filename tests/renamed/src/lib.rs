//! Every macro of serve-common through a renamed dependency: the crate is
//! `sc` here and nothing named `serve_common` exists, so each macro must
//! follow its `crate = "sc"`.
#![deny(warnings)]
#![warn(clippy::pedantic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use sc::cached::Cache;

/// How many times `Totals::sum` ran.
pub static COMPUTED: AtomicUsize = AtomicUsize::new(0);

/// The sum of the `n` of the `renamed.ping` events the sync handler saw.
pub static PINGS: AtomicUsize = AtomicUsize::new(0);

/// The same for `renamed.async` and the async handler.
pub static ASYNC_PINGS: AtomicUsize = AtomicUsize::new(0);

/// A cached property over an input field.
#[derive(sc::Cached)]
#[cache(crate = "sc")]
pub struct Totals {
    #[input]
    values: Vec<u64>,
    cache: Cache<Self>,
}

#[sc::cached(crate = "sc")]
impl Totals {
    /// A new struct over `values`.
    #[must_use]
    pub fn new(values: Vec<u64>) -> Self {
        Self {
            values,
            cache: Cache::new(),
        }
    }

    /// The sum of the values, computed once per change.
    // The markers by the renamed path too.
    #[sc::cached]
    #[sc::dependency(values)]
    pub fn sum(&self) -> u64 {
        COMPUTED.fetch_add(1, Ordering::SeqCst);
        self.values.iter().sum()
    }
}

/// The payload of `renamed.ping` and `renamed.async`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ping {
    /// What the handler adds.
    pub n: u64,
}

#[sc::on_event("renamed.ping", ack, crate = "sc")]
fn on_ping(ping: &Ping) {
    PINGS.fetch_add(usize::try_from(ping.n).unwrap_or(0), Ordering::SeqCst);
}

#[sc::on_event("renamed.async", ack, crate = "sc")]
async fn on_async_ping(ping: &Ping) {
    std::future::ready(()).await;
    ASYNC_PINGS.fetch_add(usize::try_from(ping.n).unwrap_or(0), Ordering::SeqCst);
}

/// Doubles `x`, timed at INFO.
#[sc::time_and_log("doubling {x}", level = "info", crate = "sc")]
pub fn double(x: u64) -> u64 {
    x * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_properties_work_under_the_renamed_crate() {
        let mut totals = Totals::new(vec![1, 2, 3]);
        let before = COMPUTED.load(Ordering::SeqCst);
        assert_eq!(*totals.sum(), 6);
        assert_eq!(*totals.sum(), 6);
        assert_eq!(COMPUTED.load(Ordering::SeqCst), before + 1);
        totals.set_values(vec![10]);
        assert_eq!(*totals.sum(), 10);
        assert_eq!(COMPUTED.load(Ordering::SeqCst), before + 2);
    }

    #[test]
    fn handlers_registered_under_the_renamed_crate_run() {
        let bus = sc::event::bus();
        let timeout = std::time::Duration::from_secs(10);
        bus.notify_and_wait("renamed.ping", Ping { n: 3 }, None, timeout)
            .expect("the sync handler acknowledges");
        assert_eq!(PINGS.load(Ordering::SeqCst), 3);
        bus.notify_and_wait("renamed.async", Ping { n: 4 }, None, timeout)
            .expect("the async handler acknowledges");
        assert_eq!(ASYNC_PINGS.load(Ordering::SeqCst), 4);
        assert_eq!(double(21), 42);
    }
}
