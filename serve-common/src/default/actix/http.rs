//! CORS (`[server.cors]`, with `actix-cors`) and response compression
//! (`server.compress`, actix-web's `Compress`, feature `compress`).

use actix_web::http::header::HeaderName;
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
            // Browsers send `Origin` lower-case and without a default
            // port, and it is compared as written.
            let default_port = (origin.starts_with("https://") && origin.ends_with(":443"))
                || (origin.starts_with("http://") && origin.ends_with(":80"));
            if !valid
                || origin.ends_with('/')
                || *origin != origin.to_ascii_lowercase()
                || default_port
            {
                return Err(format!(
                    "`cors.allowed_origins`: {origin:?} is not an origin as browsers send it (scheme://host[:port], lower-case, no default port, no path)"
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
            // Method names are case-sensitive; `get` means `GET` here.
            Some(methods) => cors.allowed_methods(
                methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
            ),
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

/// CORS (actix-cors) for the requests that carry an `Origin` (a browser's
/// cross-origin ones, preflights included); the others (curl, services,
/// load balancers) skip its work and get `Vary: Origin`, so a cache does
/// not hand their answer to a page of another origin.
#[derive(Default)]
pub(crate) struct CorsGate(pub(crate) actix_cors::Cors);

mod cors_gate {
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll};

    use actix_web::body::{EitherBody, MessageBody};
    use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
    use actix_web::http::header::{HeaderValue, ORIGIN, VARY};

    use super::CorsGate;

    /// The inner service, shared by the CORS path and the plain one.
    pub(crate) struct Shared<S>(Rc<S>);

    impl<S: Service<ServiceRequest>> Service<ServiceRequest> for Shared<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&self, request: ServiceRequest) -> Self::Future {
            self.0.call(request)
        }
    }

    type Cors<S> = <actix_cors::Cors as Transform<Shared<S>, ServiceRequest>>::Transform;

    impl<S, B> Transform<S, ServiceRequest> for CorsGate
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        S::Future: 'static,
        B: MessageBody + 'static,
    {
        type Response = ServiceResponse<EitherBody<B>>;
        type Error = actix_web::Error;
        type Transform = CorsGateService<S>;
        type InitError = ();
        type Future = Pin<Box<dyn Future<Output = Result<Self::Transform, ()>>>>;

        fn new_transform(&self, service: S) -> Self::Future {
            let plain = Rc::new(service);
            let cors = self.0.new_transform(Shared(plain.clone()));
            Box::pin(async move {
                Ok(CorsGateService {
                    cors: cors.await?,
                    plain,
                })
            })
        }
    }

    /// The service [`CorsGate`] wraps.
    pub(crate) struct CorsGateService<S: Service<ServiceRequest> + 'static>
    where
        actix_cors::Cors: Transform<Shared<S>, ServiceRequest>,
    {
        cors: Cors<S>,
        plain: Rc<S>,
    }

    pin_project_lite::pin_project! {
        /// A request's answer: through CORS, or plain with `Vary: Origin`.
        #[project = Projected]
        pub(crate) enum CorsGateFuture<C, P> {
            Cors { #[pin] future: C },
            Plain { #[pin] future: P },
        }
    }

    impl<C, P, B> Future for CorsGateFuture<C, P>
    where
        C: Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>,
        P: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    {
        type Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                Projected::Cors { future } => future.poll(cx),
                Projected::Plain { future } => {
                    let mut response = std::task::ready!(future.poll(cx))?;
                    response
                        .headers_mut()
                        .append(VARY, HeaderValue::from_static("origin"));
                    Poll::Ready(Ok(response.map_into_left_body()))
                }
            }
        }
    }

    impl<S, B> Service<ServiceRequest> for CorsGateService<S>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        S::Future: 'static,
        B: MessageBody + 'static,
    {
        type Response = ServiceResponse<EitherBody<B>>;
        type Error = actix_web::Error;
        type Future = CorsGateFuture<<Cors<S> as Service<ServiceRequest>>::Future, S::Future>;

        actix_web::dev::forward_ready!(plain);

        fn call(&self, request: ServiceRequest) -> Self::Future {
            if request.headers().contains_key(ORIGIN) {
                CorsGateFuture::Cors {
                    future: self.cors.call(request),
                }
            } else {
                CorsGateFuture::Plain {
                    future: self.plain.call(request),
                }
            }
        }
    }
}

/// The default of `server.compress_min_bytes`.
pub const DEFAULT_COMPRESS_MIN_BYTES: usize = 1024;

/// `server.compress`: responses of at least `min` bytes (or of a size not
/// known in advance) are compressed with the encoding the client prefers
/// among zstd, brotli and gzip (actix-http's encoder). A request that asks
/// for none costs a header lookup; images (but SVG) and video are sent as
/// they are, like actix-web's `Compress` does.
/// (Wrapped in `Condition`: with `compress` off it is not in the
/// request's path at all.)
#[cfg(feature = "compress")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compression {
    pub(crate) min: usize,
}

#[cfg(feature = "compress")]
mod compression {
    use std::future::{ready, Future, Ready};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use actix_http::encoding::Encoder;
    use actix_web::body::{BodySize, EitherBody, MessageBody};
    use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
    use actix_web::http::header::{self, AcceptEncoding, ContentEncoding, Encoding, HeaderValue};
    use actix_web::HttpMessage as _;

    use super::Compression;

    const SUPPORTED: [Encoding; 4] = [
        Encoding::identity(),
        Encoding::zstd(),
        Encoding::brotli(),
        Encoding::gzip(),
    ];

    impl<S, B> Transform<S, ServiceRequest> for Compression
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        B: MessageBody + 'static,
    {
        type Response = ServiceResponse<EitherBody<B, Encoder<B>>>;
        type Error = actix_web::Error;
        type Transform = CompressionService<S>;
        type InitError = ();
        type Future = Ready<Result<Self::Transform, Self::InitError>>;

        fn new_transform(&self, service: S) -> Self::Future {
            ready(Ok(CompressionService {
                service,
                settings: *self,
            }))
        }
    }

    /// The service [`Compression`] wraps.
    pub(crate) struct CompressionService<S> {
        service: S,
        settings: Compression,
    }

    pin_project_lite::pin_project! {
        /// The response of [`CompressionService`]: its service's, encoded
        /// when worth it. Not boxed: nothing allocated per request.
        pub(crate) struct CompressionFuture<F> {
            #[pin]
            future: F,
            encoding: Option<ContentEncoding>,
            min: usize,
        }
    }

    impl<F, B> Future for CompressionFuture<F>
    where
        F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
        B: MessageBody,
    {
        type Output = Result<ServiceResponse<EitherBody<B, Encoder<B>>>, actix_web::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let mut response = std::task::ready!(this.future.poll(cx))?;
            // The encoder says `Vary: accept-encoding` when it encodes; an
            // answer that was not encoded says it here.
            let vary = |response: &mut ServiceResponse<B>| {
                response
                    .headers_mut()
                    .append(header::VARY, HeaderValue::from_static("accept-encoding"));
            };
            let Some(encoding) = *this.encoding else {
                vary(&mut response);
                return Poll::Ready(Ok(response.map_into_left_body()));
            };
            let worth = match response.response().body().size() {
                BodySize::None => false,
                BodySize::Sized(n) => n >= *this.min as u64,
                BodySize::Stream => true,
            };
            if !worth
                || response.headers().contains_key(header::CONTENT_ENCODING)
                || !compressible(response.headers().get(header::CONTENT_TYPE))
            {
                vary(&mut response);
                return Poll::Ready(Ok(response.map_into_left_body()));
            }
            Poll::Ready(Ok(response.map_body(|head, body| {
                EitherBody::right(Encoder::response(encoding, head, body))
            })))
        }
    }

    /// Whether a body of this type is worth compressing.
    fn compressible(content_type: Option<&HeaderValue>) -> bool {
        let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
            return true;
        };
        let value = value.trim_start().as_bytes();
        let starts = |prefix: &str| {
            value.len() >= prefix.len()
                && value[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        !(starts("video/") || (starts("image/") && !starts("image/svg")))
    }

    impl<S, B> Service<ServiceRequest> for CompressionService<S>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
        B: MessageBody + 'static,
    {
        type Response = ServiceResponse<EitherBody<B, Encoder<B>>>;
        type Error = actix_web::Error;
        type Future = CompressionFuture<S::Future>;

        actix_web::dev::forward_ready!(service);

        fn call(&self, request: ServiceRequest) -> Self::Future {
            let min = self.settings.min;
            let encoding = if request.headers().contains_key(header::ACCEPT_ENCODING) {
                request
                    .get_header::<AcceptEncoding>()
                    .and_then(|accept| accept.negotiate(SUPPORTED.iter()))
                    .and_then(|encoding| match encoding {
                        Encoding::Known(ContentEncoding::Identity) => None,
                        Encoding::Known(known) => Some(known),
                        _ => None,
                    })
            } else {
                None
            };
            CompressionFuture {
                future: self.service.call(request),
                encoding,
                min,
            }
        }
    }
}
