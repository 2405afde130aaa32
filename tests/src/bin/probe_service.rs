//! A service for tests/tests/health.rs: routes that hold a request
//! (`/slow/{ms}`) or the event dispatcher (`/block/{ms}`), and health
//! checks whose behaviour the config drives (`[probe]`): `slow_check_ms`
//! makes the readiness check `slow` sleep that long (timeout 300 ms),
//! `live_fails = true` fails the liveness check `heart`. For
//! tests/tests/tracing.rs, `/trace` answers with the request's trace
//! context and the headers a call from it would carry. For
//! tests/tests/http_settings.rs, `POST /echo` (a JSON body) and
//! `POST /bytes` (any body) answer with the body's size, `/text/{n}` with
//! a JSON string of `n` letters, and a `/slow`
//! request whose future is dropped logs "slow request dropped".

use std::time::Duration;

use serve_common::config::config;
use serve_common::default::actix::{self, web};
use serve_common::default::management;
use serve_common::prelude::*;

/// Logs when a `/slow` request's future is dropped before it finished.
struct DropLog(bool);

impl Drop for DropLog {
    fn drop(&mut self) {
        if !self.0 {
            tracing::warn!("slow request dropped");
        }
    }
}

/// Answers 200 after `ms` milliseconds.
#[api_operation(summary = "Answers after a while")]
async fn slow(ms: web::Path<u64>) -> web::Json<u64> {
    let mut guard = DropLog(false);
    tokio::time::sleep(Duration::from_millis(*ms)).await;
    guard.0 = true;
    web::Json(*ms)
}

/// The body of `POST /echo`.
#[derive(Deserialize, JsonSchema, ApiComponent)]
struct Note {
    text: String,
}

/// The length of a JSON body's text.
#[api_operation(summary = "Measures a JSON body")]
async fn echo(body: web::Json<Note>) -> web::Json<usize> {
    web::Json(body.text.len())
}

/// A JSON string of `n` letters (for the compression tests).
#[api_operation(summary = "A body of a given size")]
async fn text(n: web::Path<usize>) -> web::Json<String> {
    web::Json("a".repeat(*n))
}

/// The size of any body.
#[api_operation(summary = "Measures a body", skip_args = "body")]
async fn bytes(body: web::Bytes) -> web::Json<usize> {
    web::Json(body.len())
}

/// Holds the event dispatcher `ms` milliseconds (a handler that blocks).
#[api_operation(summary = "Blocks the event dispatcher for a while")]
async fn block(ms: web::Path<u64>) -> web::Json<u64> {
    serve_common::event::notify_local("probe.block", *ms);
    web::Json(*ms)
}

/// What `/trace` answers.
#[derive(Serialize, JsonSchema, ApiComponent)]
struct Traced {
    request_id: String,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    /// The headers of a call made from here.
    outgoing: Vec<(String, String)>,
}

/// The request's trace context.
#[api_operation(summary = "The request's trace context")]
async fn trace() -> web::Json<Traced> {
    let context = serve_common::trace_context::current().expect("inside a request");
    tracing::info!("handling the trace request");
    // A task spawned with `carry` keeps the context.
    let carried = actix_web::rt::spawn(serve_common::request_id::carry(async {
        serve_common::trace_context::current()
    }))
    .await
    .expect("the task");
    assert_eq!(carried.as_ref(), Some(&context));
    web::Json(Traced {
        request_id: serve_common::request_id::get().expect("an id").to_string(),
        trace_id: context.trace_id.to_string(),
        span_id: context.span_id.to_string(),
        parent_span_id: context.parent_span_id.map(|s| s.to_string()),
        outgoing: context
            .headers()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
    })
}

#[serve_common::main]
async fn main() -> std::io::Result<()> {
    serve_common::event::on("probe.block")
        .call_typed(|_: &str, ms: &u64| std::thread::sleep(Duration::from_millis(*ms)))
        .expect("a handler");
    management::health_check("slow")
        .timeout(Duration::from_millis(300))
        .register(|| {
            let ms = config().get_or("probe.slow_check_ms", 0_u64);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(())
        });
    management::health_check("heart").liveness().register(|| {
        if config().get_or("probe.live_fails", false) {
            Err("the heart stopped".to_owned())
        } else {
            Ok(())
        }
    });
    actix::serve(|app| {
        app.service(actix::resource("/slow/{ms}").route(actix::get().to(slow)))
            .service(actix::resource("/block/{ms}").route(actix::get().to(block)))
            .service(actix::resource("/trace").route(actix::get().to(trace)))
            .service(actix::resource("/echo").route(actix::post().to(echo)))
            .service(actix::resource("/bytes").route(actix::post().to(bytes)))
            .service(actix::resource("/text/{n}").route(actix::get().to(text)))
    })
    .await
}
