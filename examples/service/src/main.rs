//! The example service: the counterpart of the original's example app.
//!
//! `cargo run -p example-service` serves on http://127.0.0.1:8000 until
//! Ctrl-C (or SIGTERM); in another terminal:
//!
//! ```sh
//! curl localhost:8000/hello/ann                 # {"message":"hello, ann!","template_version":1}
//! curl localhost:8000/manage/version            # 0.1.0
//! curl localhost:8000/manage/health             # {"status":"ok","pid":...}
//! curl localhost:8000/manage/metrics            # Prometheus text: requests, events, greetings_total...
//! curl -X POST -H 'content-type: application/json' \
//!      -d '{"level":"DEBUG"}' localhost:8000/manage/logging/level
//! xdg-open http://localhost:8000/manage/docs/   # the API docs, offline
//! ```
//!
//! Edit `examples/service/config.toml` (or the file `SERVE_COMMON_CONFIG`
//! names) while it runs: `greeting.template` changes the greeting at once.
//! `-- --demo` checks the routes and a config change in-process and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use serve_common::default::actix::{self, web};
use serve_common::prelude::*;

/// The greeting, compiled once per template change: a cached property
/// whose input follows config `greeting.template`.
#[derive(Cached)]
struct Greeter {
    #[input]
    template: String,
    cache: Cache<Self>,
}

#[cached]
impl Greeter {
    /// The template split at each `{name}`: computed once per template.
    #[cached]
    #[dependency(template)]
    fn parts(&self) -> Arc<Vec<String>> {
        COMPILED.fetch_add(1, Ordering::Relaxed);
        Arc::new(self.template.split("{name}").map(str::to_owned).collect())
    }
}

/// How many times the template was compiled (so, changed).
static COMPILED: AtomicU64 = AtomicU64::new(0);

static GREETER: LazyLock<RwLock<Greeter>> = LazyLock::new(|| {
    RwLock::new(Greeter {
        template: config().get_or("greeting.template", "hello, {name}!".to_owned()),
        cache: Cache::default(),
    })
});

/// Runs in every process when `greeting.*` changes (file edit or `set`).
#[on_event("config:greeting.*")]
fn greeting_changed(event: &str, change: &ConfigChange) {
    let template = config().get_or("greeting.template", "hello, {name}!".to_owned());
    if let Ok(mut greeter) = GREETER.write() {
        greeter.set_template(template);
    }
    // Once applied: what answers after this line uses the new template.
    tracing::info!(%event, source = ?change.source, "greeting config changed");
}

/// What `/hello/{name}` answers.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
struct Greeting {
    /// The greeting.
    message: String,
    /// How many templates this process has compiled so far.
    template_version: u64,
}

/// Greets `name` with the configured template.
#[api_operation(tag = "greetings", summary = "Greet someone")]
#[time_and_log("greeting {name}", level = "info")]
async fn hello(name: web::Path<String>) -> Result<web::Json<Greeting>, ApiError> {
    if name.len() > 100 {
        return Err(ApiError::bad_request("a name is at most 100 bytes"));
    }
    let greeter = GREETER
        .read()
        .map_err(|_| ApiError::internal("the greeter is poisoned"))?;
    let parts = greeter.parts();
    // An application metric: in /manage/metrics beside serve-common's.
    counter!("greetings_total").increment(1);
    Ok(web::Json(Greeting {
        message: parts.join(name.as_str()),
        template_version: COMPILED.load(Ordering::Relaxed),
    }))
}

/// What `/greeting` answers.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
struct Template {
    /// The configured template.
    template: String,
}

/// The template in use.
#[api_operation(tag = "greetings", summary = "The greeting template in use")]
async fn template() -> Result<web::Json<Template>, ApiError> {
    let greeter = GREETER
        .read()
        .map_err(|_| ApiError::internal("the greeter is poisoned"))?;
    Ok(web::Json(Template {
        template: greeter.template.clone(),
    }))
}

fn routes(app: actix::App) -> actix::App {
    app.service(actix::resource("/hello/{name}").route(actix::get().to(hello)))
        .service(actix::resource("/greeting").route(actix::get().to(template)))
}

#[serve_common::main(config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve_common::metrics::describe_counter!("greetings_total", "Greetings answered");
    // /manage/health answers 503 while this check fails.
    serve_common::default::management::add_health_check("greeting", || {
        let greeter = GREETER
            .read()
            .map_err(|_| "the greeter is poisoned".to_owned())?;
        if greeter.template.contains("{name}") {
            Ok(())
        } else {
            Err("greeting.template has no {name} placeholder".to_owned())
        }
    });
    let service = actix::service(routes).description("The example service of serve-common");
    if std::env::args().any(|a| a == "--demo") {
        return demo(service).await;
    }
    service.run().await?;
    Ok(())
}

/// Drives the app in-process: a greeting, a bad request, a level change,
/// a config edit on disk reaching the cached greeting.
async fn demo<F>(service: actix::Service<F>) -> Result<(), Box<dyn std::error::Error>>
where
    F: Fn(actix::App) -> actix::App + Clone + Send + 'static,
{
    use actix::actix_web_crate::test;

    let app = test::init_service(service.app().await).await;
    let get = |uri: &str| test::TestRequest::get().uri(uri).to_request();

    let hello: Greeting = test::call_and_read_body_json(&app, get("/hello/demo")).await;
    tracing::info!(?hello, "GET /hello/demo");

    let bad = test::TestRequest::post()
        .uri("/manage/logging/level")
        .set_json(serde_json_value("NOPE"))
        .to_request();
    let response = test::call_service(&app, bad).await;
    if response.status().as_u16() != 400 {
        return Err(format!("an unknown level answered {}", response.status()).into());
    }

    // A config change reaches the handler, the cached greeter, the route
    // (editing the file does the same; `set` leaves the file alone).
    let changed = serve_common::event::wait_for("config:greeting.template")?;
    config().set("greeting.template", "good morning, {name}.")?;
    changed.wait(Duration::from_secs(10))?;
    serve_common::event::bus().flush(Duration::from_secs(5));
    let after: Greeting = test::call_and_read_body_json(&app, get("/hello/demo")).await;
    tracing::info!(?after, "GET /hello/demo after the change");
    if after.message != "good morning, demo." {
        return Err(format!("the edit did not reach the route: {after:?}").into());
    }
    tracing::info!("demo finished: routes, errors and a hot reload all worked");
    Ok(())
}

/// `{"level": <level>}`, without a serde_json dependency.
fn serde_json_value(level: &str) -> std::collections::BTreeMap<&'static str, String> {
    std::collections::BTreeMap::from([("level", level.to_owned())])
}
