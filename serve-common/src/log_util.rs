//! Logging utilities (the Python original's `log_util`): timing a block or a function.
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
    started: Option<(std::borrow::Cow<'static, str>, Instant, LogFn)>,
}

impl TimedCall {
    #[doc(hidden)]
    #[inline]
    pub fn start(message: String, log: LogFn) -> Self {
        Self {
            started: Some((message.into(), Instant::now(), log)),
        }
    }

    /// A message without placeholders: nothing to format or allocate.
    #[doc(hidden)]
    #[inline]
    pub fn start_static(message: &'static str, log: LogFn) -> Self {
        Self {
            started: Some((message.into(), Instant::now(), log)),
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

/// Actix middleware that times each request (the Python original's `RequestTimer`):
/// logs `hit <path>` at INFO when a route matched (at DEBUG `no route
/// matched <method> <path>` otherwise, once), then `request completed
/// with <status> (took <ms> ms)`. Put it inside the request-id middleware
/// (`.wrap(RequestTimer).wrap(RequestIdMiddleware)`) so its lines carry
/// the id.
///
/// Needs the `actix` feature.
#[cfg(feature = "actix")]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTimer;

#[cfg(feature = "actix")]
mod timer {
    use std::future::{ready, Future, Ready};
    use std::pin::Pin;
    use std::time::Instant;

    use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};

    use super::RequestTimer;

    impl<S, B> Transform<S, ServiceRequest> for RequestTimer
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        B: 'static,
    {
        type Response = ServiceResponse<B>;
        type Error = actix_web::Error;
        type Transform = RequestTimerService<S>;
        type InitError = ();
        type Future = Ready<Result<Self::Transform, Self::InitError>>;

        fn new_transform(&self, service: S) -> Self::Future {
            ready(Ok(RequestTimerService { service }))
        }
    }

    /// The service [`RequestTimer`] wraps.
    #[derive(Debug)]
    pub struct RequestTimerService<S> {
        service: S,
    }

    type BoxedResponse<B> =
        Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

    impl<S, B> Service<ServiceRequest> for RequestTimerService<S>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        B: 'static,
    {
        type Response = ServiceResponse<B>;
        type Error = actix_web::Error;
        type Future = BoxedResponse<B>;

        actix_web::dev::forward_ready!(service);

        fn call(&self, request: ServiceRequest) -> Self::Future {
            let started = Instant::now();
            // Finding the route walks the routes again: only for a line
            // that is written (neither is below INFO).
            if tracing::enabled!(tracing::Level::INFO) {
                match request.match_pattern() {
                    Some(_) => {
                        let client = crate::default::actix::client::address(&request);
                        tracing::info!(
                            client = client.map(tracing::field::display),
                            "hit {}",
                            request.path()
                        )
                    }
                    None => {
                        tracing::debug!("no route matched {} {}", request.method(), request.path())
                    }
                }
            }
            let future = self.service.call(request);
            Box::pin(async move {
                let result = future.await;
                let millis = started.elapsed().as_secs_f64() * 1e3;
                match &result {
                    Ok(response) => tracing::info!(
                        "request completed with {} (took {millis:.2} ms)",
                        response.status().as_u16()
                    ),
                    Err(error) => tracing::info!(
                        "request completed with {} (took {millis:.2} ms)",
                        error.as_response_error().status_code().as_u16()
                    ),
                }
                result
            })
        }
    }
}

#[cfg(feature = "actix")]
pub use timer::RequestTimerService;
