//! The request metrics: `http_requests_total` and
//! `http_request_duration_seconds`, by method and route template.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
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
            routes: RefCell::default(),
        }))
    }
}

/// The service [`HttpMetrics`] wraps.
pub(crate) struct HttpMetricsService<S> {
    service: S,
    enabled: bool,
    routes: RefCell<Routes>,
}

impl<S> std::fmt::Debug for HttpMetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetricsService")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
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
        let route = self.routes.borrow_mut().of(&request);
        let future = self.service.call(request);
        Box::pin(async move {
            let result = future.await;
            let status = match &result {
                Ok(response) => response.status().as_u16(),
                Err(error) => error.as_response_error().status_code().as_u16(),
            };
            if let Some(route) = route {
                route.record(method, status, started.elapsed().as_secs_f64());
            }
            result
        })
    }
}

/// The most paths [`Routes`] remembers; then it starts over.
const PATHS_MAX: usize = 1024;
/// The longest path [`Routes`] remembers.
const PATH_MAX_BYTES: usize = 256;

/// One app's routes on one actix thread, by template and by path.
#[derive(Default)]
struct Routes {
    by_template: HashMap<Box<str>, Rc<Route>>,
    /// A request path's route (`None`: not recorded). Asking actix
    /// (`match_pattern`) walks the routes again and allocates the template,
    /// for every request; a path's route never changes. Bounded: endless
    /// distinct paths cost a miss each, not memory.
    by_path: HashMap<Box<str>, Option<Rc<Route>>>,
}

impl Routes {
    fn of(&mut self, request: &ServiceRequest) -> Option<Rc<Route>> {
        if let Some(route) = self.by_path.get(request.path()) {
            return route.clone();
        }
        let template = request.match_pattern();
        let template = template.as_deref().unwrap_or(UNMATCHED);
        // The service's own request for its OpenAPI document, at start.
        let route = (!template.starts_with(INTERNAL_PREFIX)).then(|| {
            self.by_template
                .entry(template.into())
                .or_insert_with(|| {
                    let excluded = super::settings()
                        .exclusions()
                        .is_ok_and(|set| set.is_match(template));
                    Rc::new(Route {
                        template: template.into(),
                        excluded,
                        handles: RefCell::default(),
                    })
                })
                .clone()
        });
        // Long paths are not kept: the cache's memory stays small.
        if request.path().len() <= PATH_MAX_BYTES {
            if self.by_path.len() >= PATHS_MAX {
                self.by_path.clear();
            }
            self.by_path.insert(request.path().into(), route.clone());
        }
        route
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

/// A route template's metric handles on one actix thread.
struct Route {
    template: Box<str>,
    excluded: bool,
    handles: RefCell<RouteHandles>,
}

#[derive(Default)]
struct RouteHandles {
    /// By (method, status).
    counts: Vec<(&'static str, u16, Counter)>,
    /// By method.
    durations: Vec<(&'static str, Histogram)>,
}

impl Route {
    fn record(&self, method: &'static str, status: u16, seconds: f64) {
        if self.excluded {
            return;
        }
        let mut handles = self.handles.borrow_mut();
        let metadata = Metadata::new(module_path!(), Level::INFO, None);
        let labels = |extra: Option<u16>| {
            let mut labels = vec![
                Label::new("method", method),
                Label::new("route", self.template.to_string()),
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
                let counter = super::install().register_counter(&key, &metadata);
                counter.increment(1);
                handles.counts.push((method, status, counter));
            }
        }
        match handles.durations.iter().find(|(m, _)| *m == method) {
            Some((_, histogram)) => histogram.record(seconds),
            None => {
                let key = Key::from_parts(DURATION, labels(None));
                let histogram = super::install().register_histogram(&key, &metadata);
                histogram.record(seconds);
                handles.durations.push((method, histogram));
            }
        }
    }
}
