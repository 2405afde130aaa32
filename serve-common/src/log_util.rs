//! Logging utilities (the seed's `log_util`): timing a block or a function.
//!
//! ```
//! use serve_common::log_util::time_and_log;
//!
//! #[serve_common::time_and_log("doubling {x}")]
//! fn double(x: u64) -> u64 {
//!     2 * x
//! }
//! // DEBUG doubling 21: 1506 ns
//!
//! {
//!     let _timer = time_and_log("loading the model");
//!     // ... the block's work ...
//! } // DEBUG loading the model: 3000132280 ns
//! # assert_eq!(double(21), 42);
//! ```
//!
//! Both log `<message>: <N> ns` at DEBUG (the attribute takes `level =
//! "info"` and the like). When that level is off, neither the clock is read
//! nor the message formatted. The attribute logs under the function's
//! module (its target), the guard under `serve_common::log_util`. The
//! attribute's message may name the function's arguments (`{x}`,
//! `{x:?}`), formatted before the body runs; on an `async fn` the time runs
//! from the first poll to completion.

use std::time::Instant;

use tracing::Level;

/// Times until dropped, then logs `<message>: <N> ns` at DEBUG.
#[must_use = "the time is logged when the guard is dropped: bind it with `let _timer = ...`"]
pub struct TimeAndLog {
    started: Option<(String, Instant)>,
}

/// Starts timing a block; see the [module docs](self).
pub fn time_and_log(message: impl Into<String>) -> TimeAndLog {
    let started = tracing::enabled!(Level::DEBUG).then(|| (message.into(), Instant::now()));
    TimeAndLog { started }
}

impl Drop for TimeAndLog {
    fn drop(&mut self) {
        if let Some((message, started)) = self.started.take() {
            tracing::debug!("{message}: {} ns", started.elapsed().as_nanos());
        }
    }
}

/// Logs a finished call: written by the macro in the user's module, so the
/// line has the user's target.
type LogFn = fn(&str, u128);

/// What `#[time_and_log]` expands to.
#[doc(hidden)]
pub struct TimedCall {
    started: Option<(String, Instant, LogFn)>,
}

impl TimedCall {
    #[doc(hidden)]
    #[inline]
    pub fn start(message: String, log: LogFn) -> Self {
        Self {
            started: Some((message, Instant::now(), log)),
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn off() -> Self {
        Self { started: None }
    }
}

impl Drop for TimedCall {
    #[inline]
    fn drop(&mut self) {
        if let Some((message, started, log)) = self.started.take() {
            log(&message, started.elapsed().as_nanos());
        }
    }
}
