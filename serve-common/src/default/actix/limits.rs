//! `server.request_timeout`: a handler that runs longer is answered with a
//! 503 JSON body, and its future is dropped (what it was awaiting is
//! cancelled with it).

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};

use super::ApiError;

/// The middleware (wrapped in `Condition`: without a timeout it is not in
/// the request's path at all).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestTimeout(pub(crate) Duration);

impl<S, B> Transform<S, ServiceRequest> for RequestTimeout
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestTimeoutService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestTimeoutService {
            service,
            timeout: self.0,
        }))
    }
}

/// The service [`RequestTimeout`] wraps.
pub(crate) struct RequestTimeoutService<S> {
    service: S,
    timeout: Duration,
}

type BoxedResponse<B> = Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

impl<S, B> Service<ServiceRequest> for RequestTimeoutService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = BoxedResponse<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let timeout = self.timeout;
        // Routing needs the only handle on the request: keep what the log
        // line needs, not a clone.
        let (method, path) = (request.method().clone(), request.path().to_owned());
        let future = self.service.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, future).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(
                        %method,
                        %path,
                        "the handler ran past server.request_timeout ({} ms): answered 503, its future dropped",
                        timeout.as_millis()
                    );
                    // An error, which actix answers with its JSON body (the
                    // request went into the dropped future).
                    // (so without the X-Request-Id header: the body names it).
                    let id = crate::request_id::get()
                        .map(|id| format!(", request id {}", id.as_str()))
                        .unwrap_or_default();
                    Err(ApiError::service_unavailable(format!(
                        "the request took longer than the service allows ({} ms{id})",
                        timeout.as_millis()
                    ))
                    .into())
                }
            }
        })
    }
}
