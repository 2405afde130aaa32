//! [`App`]: what the closure given to [`serve`](super::serve) receives.

use std::cell::RefCell;
use std::rc::Rc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use apistos::web::{Redirect, Resource, Route, Scope, ServiceConfig};

type Step = Box<dyn FnOnce(&mut ServiceConfig<'_>)>;

/// The routes of a service, as the closure given to
/// [`serve`](super::serve) or [`service`](super::service) adds them.
/// Every method records and hands back the same app, so both styles work:
///
/// ```no_run
/// use serve_common::default::actix::{self, api_operation};
///
/// #[api_operation(summary = "Ping")]
/// async fn ping() -> String { "pong".into() }
/// #[api_operation(summary = "Pong")]
/// async fn pong() -> String { "ping".into() }
///
/// # async fn run() -> std::io::Result<()> {
/// // chained, the app returned
/// actix::serve(|app| app.service(actix::resource("/ping").route(actix::get().to(ping)))).await?;
/// // statements, nothing returned
/// actix::serve(|app| {
///     app.service(actix::resource("/ping").route(actix::get().to(ping)));
///     app.service(actix::resource("/pong").route(actix::get().to(pong)));
/// })
/// .await
/// # }
/// ```
///
/// Routes built with this module's [`resource`](super::resource),
/// [`scope`](super::scope) and [`get`](super::get)/[`post`](super::post)/...
/// (apistos') land in the OpenAPI document; their handlers need
/// `#[api_operation]` (that is what documents them). The app is built once
/// per worker thread (and once more to render the OpenAPI document), so
/// the closure runs several times: create shared state outside it and
/// move a clone in.
#[derive(Clone, Default)]
pub struct App {
    steps: Rc<RefCell<Vec<Step>>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("steps", &self.steps.borrow().len())
            .finish()
    }
}

impl App {
    fn push(&self, step: impl FnOnce(&mut ServiceConfig<'_>) + 'static) -> Self {
        self.steps.borrow_mut().push(Box::new(step));
        self.clone()
    }

    /// Adds a resource, scope or redirect (documented in the OpenAPI
    /// document when it has `#[api_operation]` handlers).
    pub fn service<S: Documented>(&self, service: S) -> Self {
        self.push(move |config| service.register(config))
    }

    /// Adds a route at `path`.
    pub fn route(&self, path: &str, route: Route) -> Self {
        let path = path.to_owned();
        self.push(move |config| {
            config.route(&path, route);
        })
    }

    /// Adds application data for your routes' handlers. For state shared
    /// by every thread, create the `web::Data` outside the closure and pass
    /// a clone here; one created inside is per thread.
    pub fn app_data<U: 'static>(&self, data: U) -> Self {
        self.push(move |config| {
            config.app_data(data);
        })
    }

    /// Runs a routes function written against apistos' (or actix-web's)
    /// `ServiceConfig` idiom: `fn routes(config: &mut ServiceConfig)`.
    pub fn configure<F>(&self, configure: F) -> Self
    where
        F: FnOnce(&mut ServiceConfig<'_>) + 'static,
    {
        self.push(configure)
    }

    /// Applies what was recorded.
    pub(crate) fn apply(&self, config: &mut ServiceConfig<'_>) {
        for step in self.steps.borrow_mut().drain(..) {
            step(config);
        }
    }
}

/// What the closure given to [`serve`](super::serve) may return: nothing,
/// or the [`App`] it was given.
pub trait RoutesDone {}

impl RoutesDone for () {}
impl RoutesDone for App {}

/// What [`App::service`] takes: apistos' [`Resource`], [`Scope`] and
/// [`Redirect`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a documented route",
    note = "build routes with `serve_common::default::actix::{{resource, scope, get, post, ...}}` (apistos'), not actix-web's `web::resource`"
)]
pub trait Documented: 'static {
    /// Registers it.
    fn register(self, config: &mut ServiceConfig<'_>);
}

impl<T, B> Documented for Resource<actix_web::Resource<T>>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    fn register(self, config: &mut ServiceConfig<'_>) {
        config.service(self);
    }
}

impl<T, B> Documented for Scope<actix_web::Scope<T>>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    fn register(self, config: &mut ServiceConfig<'_>) {
        config.service(self);
    }
}

impl Documented for Redirect {
    fn register(self, config: &mut ServiceConfig<'_>) {
        config.service(self);
    }
}
