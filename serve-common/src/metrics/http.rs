//! The request metrics: `http_requests_total` and
//! `http_request_duration_seconds`, by method and route template.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder as _};

/// The `route` of requests no route matched: one series for all of them.
pub(crate) const UNMATCHED: &str = "<unmatched>";
/// The routes the service calls itself (`/.serve-common/openapi.json`).
const INTERNAL_PREFIX: &str = "/.serve-common/";
const REQUESTS: &str = "http_requests_total";
const DURATION: &str = "http_request_duration_seconds";

/// Actix middleware recording every request's count and duration (see
/// [`crate::metrics`]); the service wraps it around everything but the
/// request id.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HttpMetrics;

impl<S, B> Transform<S, ServiceRequest> for HttpMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = HttpMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let settings = super::settings();
        if settings.enabled {
            let recorder = super::install();
            recorder.describe_counter(
                REQUESTS.into(),
                None,
                "HTTP requests, by method, route template and status code".into(),
            );
            recorder.describe_histogram(
                DURATION.into(),
                None,
                "Time until the response's head was ready, by method and route template".into(),
            );
        }
        ready(Ok(HttpMetricsService {
            service,
            enabled: settings.enabled,
        }))
    }
}

/// The service [`HttpMetrics`] wraps.
#[derive(Debug)]
pub(crate) struct HttpMetricsService<S> {
    service: S,
    enabled: bool,
}

type BoxedResponse<B> = Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

impl<S, B> Service<ServiceRequest> for HttpMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = BoxedResponse<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        if !self.enabled {
            return Box::pin(self.service.call(request));
        }
        let started = Instant::now();
        let method = method_label(request.method());
        let route = request.match_pattern();
        let future = self.service.call(request);
        Box::pin(async move {
            let result = future.await;
            let status = match &result {
                Ok(response) => response.status().as_u16(),
                Err(error) => error.as_response_error().status_code().as_u16(),
            };
            record(method, route, status, started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The method's label: the standard ones by name, any other as
/// `_OTHER` (a client cannot add series by inventing methods).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// A route's handles on one actix thread.
struct RouteHandles {
    excluded: bool,
    /// By (method, status).
    counts: Vec<(&'static str, u16, Counter)>,
    /// By method.
    durations: Vec<(&'static str, Histogram)>,
}

thread_local! {
    static ROUTES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
}

fn record(method: &'static str, route: Option<String>, status: u16, seconds: f64) {
    ROUTES.with(|routes| {
        let mut routes = routes.borrow_mut();
        let route = route.as_deref().unwrap_or(UNMATCHED);
        // The service's own request for its OpenAPI document, at start.
        if route.starts_with(INTERNAL_PREFIX) {
            return;
        }
        if !routes.contains_key(route) {
            let excluded = super::settings()
                .exclusions()
                .is_ok_and(|set| set.is_match(route));
            routes.insert(
                route.to_owned(),
                RouteHandles {
                    excluded,
                    counts: Vec::new(),
                    durations: Vec::new(),
                },
            );
        }
        let handles = routes.get_mut(route).expect("inserted");
        if handles.excluded {
            return;
        }
        let metadata = Metadata::new(module_path!(), Level::INFO, None);
        let recorder = super::install();
        let labels = |extra: Option<u16>| {
            let mut labels = vec![
                Label::new("method", method),
                Label::new("route", route.to_owned()),
            ];
            if let Some(status) = extra {
                labels.push(Label::new("status", status.to_string()));
            }
            labels
        };
        match handles
            .counts
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
        {
            Some((_, _, counter)) => counter.increment(1),
            None => {
                let key = Key::from_parts(REQUESTS, labels(Some(status)));
                let counter = recorder.register_counter(&key, &metadata);
                counter.increment(1);
                handles.counts.push((method, status, counter));
            }
        }
        match handles.durations.iter().find(|(m, _)| *m == method) {
            Some((_, histogram)) => histogram.record(seconds),
            None => {
                let key = Key::from_parts(DURATION, labels(None));
                let histogram = recorder.register_histogram(&key, &metadata);
                histogram.record(seconds);
                handles.durations.push((method, histogram));
            }
        }
    });
}
