//! Request ids (the Python original's `request_id`): every request gets one, and
//! everything that runs for it can read it and logs it. Needs the `actix`
//! feature (on by default).
//!
//! ```no_run
//! use serve_common::request_id::{self, RequestIdMiddleware};
//! use serve_common::log_util::RequestTimer;
//!
//! # async fn app() {
//! let app = actix_web::App::new()
//!     .wrap(RequestTimer)            // inside: its lines carry the id
//!     .wrap(RequestIdMiddleware)
//!     .route("/", actix_web::web::get().to(|| async {
//!         tracing::info!("handling");  // [...] [INFO    ] [pid] [<id>] handling
//!         let id = request_id::get().unwrap();
//!         // Spawned tasks keep it when wrapped:
//!         tokio::spawn(request_id::carry(async { request_id::get() }));
//!         id.to_string()
//!     }));
//! # }
//! ```
//!
//! - [`RequestIdMiddleware`] gives each request a UUIDv4, or reuses a
//!   well-formed incoming `X-Request-Id` (1 to 128 characters among
//!   `A-Z a-z 0-9 - _ . : /`; anything else is replaced, so no log
//!   injection), and returns it in the `X-Request-Id` response header.
//! - [`get`] returns it anywhere in the request's handling, across
//!   `.await`s: a tokio task-local, scoped over both the synchronous part
//!   of the inner service's `call` and its future, and over a root span
//!   `request{request_id=...}`. It is gone after the response.
//! - A task spawned inside a request does not inherit task-locals: wrap
//!   its future in [`carry`] (it carries the [trace
//!   context](crate::trace_context) too).
//! - The middleware also reads the request's W3C `traceparent`: see
//!   [`crate::trace_context`].
//! - The default line format prints it after the level and pid.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::Instrument;

use crate::trace_context::CURRENT as TRACE;

/// The response and request header.
pub const HEADER: &str = "x-request-id";
/// The longest incoming id reused.
pub const MAX_LEN: usize = 128;

/// A request's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh UUIDv4.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string().into())
    }

    /// `id` if it is well-formed (see the module docs), else `None`.
    pub fn parse(id: &str) -> Option<Self> {
        let ok = (1..=MAX_LEN).contains(&id.len())
            && id.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
            });
        ok.then(|| Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The current request's id, if this runs for a request.
pub fn get() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `id` as the current request id.
pub async fn scope<F: Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// Wraps `future` so it runs with the current request id, if any: for
/// futures handed to `tokio::spawn` or `actix_web::rt::spawn`.
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let id = get();
    let trace = crate::trace_context::current();
    // The span too, so JSON lines (which read spans) carry the id.
    let span = tracing::Span::current();
    async move {
        match (id, trace) {
            (Some(id), Some(trace)) => CURRENT.scope(id, TRACE.scope(trace, future)).await,
            (Some(id), None) => CURRENT.scope(id, future).await,
            (None, Some(trace)) => TRACE.scope(trace, future).await,
            (None, None) => future.await,
        }
    }
    .instrument(span)
}

/// The middleware; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdMiddleware;

impl<S, B> Transform<S, ServiceRequest> for RequestIdMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestIdService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestIdService { service }))
    }
}

/// The service [`RequestIdMiddleware`] wraps around the app.
#[derive(Debug)]
pub struct RequestIdService<S> {
    service: S,
}

type BoxedResponse<B> = Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

impl<S, B> Service<ServiceRequest> for RequestIdService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = BoxedResponse<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let incoming = request.headers().get(HEADER).and_then(|v| v.to_str().ok());
        let id = incoming.and_then(RequestId::parse).unwrap_or_default();
        #[allow(unused_mut)]
        let mut trace = crate::trace_context::of_request(request.headers());
        #[cfg(feature = "otel")]
        let exported = crate::telemetry::active();
        #[cfg(not(feature = "otel"))]
        let exported = false;
        // The ids are known now unless the span is exported (then the
        // exported span's ids are taken, below): recorded at creation,
        // which costs the log outputs less than a record afterwards.
        let (trace_id, span_id) = if exported {
            (None, None)
        } else {
            (Some(trace.trace_id), Some(trace.span_id))
        };
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            client.address = crate::default::actix::client::address(&request)
                .map(tracing::field::display),
            trace_id = trace_id.map(tracing::field::display),
            span_id = span_id.map(tracing::field::display),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            http.request.method = tracing::field::Empty,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        #[cfg(feature = "otel")]
        if exported {
            let method = request.method().as_str().to_owned();
            let route = request.match_pattern();
            let route = route.as_deref().unwrap_or("<unmatched>");
            span.record("otel.name", format!("{method} {route}"));
            span.record("otel.kind", "server");
            span.record("http.request.method", method.as_str());
            span.record("http.route", route);
            crate::telemetry::link(&span, &mut trace);
            span.record("trace_id", tracing::field::display(trace.trace_id));
            span.record("span_id", tracing::field::display(trace.span_id));
        }
        // `call` runs part of the inner service now: scope that part too.
        let future = CURRENT.sync_scope(id.clone(), || {
            TRACE.sync_scope(trace.clone(), || {
                span.in_scope(|| self.service.call(request))
            })
        });
        let header = HeaderValue::from_str(id.as_str()).expect("a parsed id is a valid header");
        Box::pin(CURRENT.scope(
            id,
            TRACE.scope(trace, async move {
                #[cfg(feature = "otel")]
                let recorded = span.clone();
                let mut response = future.instrument(span).await?;
                #[cfg(feature = "otel")]
                if exported {
                    recorded.record(
                        "http.response.status_code",
                        i64::from(response.status().as_u16()),
                    );
                }
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(HEADER), header);
                Ok(response)
            }),
        ))
    }
}
