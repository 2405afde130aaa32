//! CORS (`[server.cors]`, with `actix-cors`) and response compression
//! (`server.compress`, actix-web's `Compress`, feature `compress`).

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};

/// `[server.cors]`: which other origins' pages may call the service from a
/// browser. Absent, no CORS headers are sent (browsers then allow only the
/// service's own origin).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed (`"https://app.example.com"`), or `["*"]` for any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Methods allowed (default: any).
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers allowed (default: any).
    pub allowed_headers: Option<Vec<String>>,
    /// Response headers a page may read besides the simple ones (default:
    /// `X-Request-Id`).
    pub expose_headers: Option<Vec<String>>,
    /// Whether cookies and `Authorization` may be sent (not with `"*"`).
    #[serde(default)]
    pub supports_credentials: bool,
    /// Seconds a browser may cache a preflight's answer.
    pub max_age: Option<usize>,
}

impl CorsSettings {
    /// Whether these settings can be used, or what is wrong, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_origins.is_empty() {
            return Err(
                "`cors.allowed_origins` is empty: list the origins (\"https://app.example.com\") or [\"*\"]"
                    .to_owned(),
            );
        }
        let any = self.allowed_origins.iter().any(|o| o == "*");
        if any && self.allowed_origins.len() > 1 {
            return Err(
                "`cors.allowed_origins`: \"*\" allows any origin; list no other".to_owned(),
            );
        }
        if any && self.supports_credentials {
            return Err(
                "`cors.supports_credentials` cannot go with `allowed_origins = [\"*\"]` (browsers refuse credentials to any origin): list the origins"
                    .to_owned(),
            );
        }
        for origin in self.allowed_origins.iter().filter(|o| *o != "*") {
            let uri: Option<Uri> = origin.parse().ok();
            let valid = uri.is_some_and(|uri| {
                uri.scheme().is_some()
                    && uri.authority().is_some()
                    && matches!(uri.path(), "" | "/")
                    && uri.query().is_none()
            });
            if !valid || origin.ends_with('/') {
                return Err(format!(
                    "`cors.allowed_origins`: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        for method in self.allowed_methods.iter().flatten() {
            Method::from_bytes(method.as_bytes())
                .map_err(|_| format!("`cors.allowed_methods`: {method:?} is not an HTTP method"))?;
        }
        for (key, names) in [
            ("allowed_headers", &self.allowed_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for name in names.iter().flatten() {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`cors.{key}`: {name:?} is not a header name"))?;
            }
        }
        Ok(())
    }

    /// The middleware (after [`validate`](Self::validate)).
    pub(crate) fn middleware(&self) -> actix_cors::Cors {
        let mut cors = actix_cors::Cors::default();
        for origin in &self.allowed_origins {
            cors = if origin == "*" {
                cors.allow_any_origin()
            } else {
                cors.allowed_origin(origin)
            };
        }
        cors = match &self.allowed_methods {
            Some(methods) => cors.allowed_methods(methods.iter().map(String::as_str)),
            None => cors.allow_any_method(),
        };
        cors = match &self.allowed_headers {
            Some(headers) => cors.allowed_headers(headers.iter().map(String::as_str)),
            None => cors.allow_any_header(),
        };
        cors = match &self.expose_headers {
            Some(headers) => cors.expose_headers(headers.iter().map(String::as_str)),
            None => cors.expose_headers([crate::request_id::HEADER]),
        };
        if self.supports_credentials {
            cors = cors.supports_credentials();
        }
        cors.max_age(self.max_age)
    }
}

/// The default of `server.compress_min_bytes`.
pub const DEFAULT_COMPRESS_MIN_BYTES: usize = 1024;

/// Keeps responses under `server.compress_min_bytes` uncompressed (actix's
/// `Compress` has no minimum): inside `Compress`, it marks a small body
/// `Content-Encoding: identity`, which `Compress` leaves alone; outside it,
/// the mark is taken off again.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CompressMinimum {
    /// Inside `Compress`: mark bodies under this many bytes.
    Mark(usize),
    /// Outside `Compress`: remove the mark.
    Unmark,
}

impl<S, B> Transform<S, ServiceRequest> for CompressMinimum
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = CompressMinimumService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CompressMinimumService {
            service,
            mode: *self,
        }))
    }
}

/// The service [`CompressMinimum`] wraps.
pub(crate) struct CompressMinimumService<S> {
    service: S,
    mode: CompressMinimum,
}

type BoxedResponse<B> = Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

impl<S, B> Service<ServiceRequest> for CompressMinimumService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = BoxedResponse<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let future = self.service.call(request);
        let mode = self.mode;
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers();
            match mode {
                CompressMinimum::Mark(min) => {
                    let small = matches!(response.response().body().size(),
                        BodySize::Sized(n) if n < min as u64);
                    if small && !headers.contains_key(header::CONTENT_ENCODING) {
                        response.headers_mut().insert(
                            header::CONTENT_ENCODING,
                            HeaderValue::from_static("identity"),
                        );
                    }
                }
                CompressMinimum::Unmark => {
                    if headers
                        .get(header::CONTENT_ENCODING)
                        .is_some_and(|v| v == "identity")
                    {
                        response.headers_mut().remove(header::CONTENT_ENCODING);
                    }
                }
            }
            Ok(response)
        })
    }
}
