//! Request ids and the request timer, through actix's test server, with
//! the real log output captured.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use actix_web::{App, HttpResponse, test as http_test, web};
use serve_common::config::{self, Config};
use serve_common::default::logging;
use serve_common::log_util::RequestTimer;
use serve_common::request_id::{self, RequestIdMiddleware};
use serve_common_tests::LogCapture;

fn logs() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        config::init(
            Config::builder()
                .no_file()
                .no_env()
                .default_value("logging.level", "DEBUG"),
        )
        .unwrap();
        let capture = LogCapture::default();
        logging::add_output_writer(capture.make_writer(), false).unwrap();
        capture
    })
}

async fn work(path: web::Path<u32>) -> HttpResponse {
    let n = path.into_inner();
    tracing::info!("handling {n}");
    tokio::task::yield_now().await;
    let here = request_id::get().expect("an id inside the request");
    // A spawned task keeps the id only when carried.
    let carried = actix_web::rt::spawn(request_id::carry(async { request_id::get() }))
        .await
        .unwrap();
    let bare = actix_web::rt::spawn(async { request_id::get() })
        .await
        .unwrap();
    assert_eq!(carried.as_ref(), Some(&here));
    assert_eq!(bare, None);
    HttpResponse::Ok().body(here.to_string())
}

macro_rules! app {
    () => {
        http_test::init_service(
            App::new()
                .wrap(RequestTimer)
                .wrap(RequestIdMiddleware)
                .route("/work/{n}", web::get().to(work)),
        )
        .await
    };
}

fn header_id(response: &actix_web::dev::ServiceResponse) -> String {
    response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_hundred_concurrent_requests_get_distinct_ids_in_every_line() {
    let logs = logs();
    actix_web::rt::System::new().block_on(async {
        let app = app!();
        let requests = (0..100).map(|n| {
            let request = http_test::TestRequest::get()
                .uri(&format!("/work/{n}"))
                .to_request();
            let app = &app;
            async move {
                let response = http_test::call_service(app, request).await;
                assert!(response.status().is_success());
                let id = header_id(&response);
                let body = http_test::read_body(response).await;
                assert_eq!(
                    std::str::from_utf8(&body).unwrap(),
                    id,
                    "the handler saw the header's id"
                );
                (n, id)
            }
        });
        let results = futures_util::future::join_all(requests).await;
        let ids: std::collections::HashSet<_> = results.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), 100, "ids are unique");
        for (n, id) in &results {
            assert!(uuid_like(id), "{id}");
            // Exactly one line of each kind carries this request's id.
            // `[<request id> <trace id's first 8 hex>]`.
            let handling = of_request(logs, id, &format!("handling {n}"));
            assert_eq!(handling.len(), 1, "{handling:?}");
            let hit = of_request(logs, id, &format!("hit /work/{n}"));
            assert_eq!(hit.len(), 1, "{hit:?}");
        }
        let timing =
            regex::Regex::new(r"\] request completed with 200 \(took \d+\.\d\d ms\)$").unwrap();
        for (_, id) in &results {
            let completed = of_request(logs, id, "request completed with 200");
            assert_eq!(completed.len(), 1, "{completed:?}");
            assert!(timing.is_match(&completed[0]), "{}", completed[0]);
        }
    });
    // Outside any request.
    assert_eq!(request_id::get(), None);
    tracing::info!("after the requests");
    let line = logs.lines_with("after the requests").pop().unwrap();
    assert!(
        regex::Regex::new(r"^\[[^]]+\] \[INFO    \] \[\d+\] after the requests$")
            .unwrap()
            .is_match(&line),
        "{line}"
    );
}

/// The lines `[<id> <8 hex>] <message>...` of the request `id`.
fn of_request(logs: &LogCapture, id: &str, message: &str) -> Vec<String> {
    let line = regex::Regex::new(&format!(
        r"\] \[{} [0-9a-f]{{8}}\] {}",
        regex::escape(id),
        regex::escape(message)
    ))
    .unwrap();
    logs.lines_with(&format!("] [{id} "))
        .into_iter()
        .filter(|l| line.is_match(l))
        .collect()
}

fn uuid_like(id: &str) -> bool {
    regex::Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        .unwrap()
        .is_match(id)
}

#[test]
fn incoming_ids_are_reused_when_well_formed_and_replaced_otherwise() {
    logs();
    actix_web::rt::System::new().block_on(async {
        let app = app!();
        let call = |value: &str| {
            let request = http_test::TestRequest::get()
                .uri("/work/1")
                .insert_header(("x-request-id", value))
                .to_request();
            http_test::call_service(&app, request)
        };
        let reused = call("client-1234.abc:xyz/9").await;
        assert_eq!(header_id(&reused), "client-1234.abc:xyz/9");
        for bad in [
            "has space",
            "tab\there",
            "<script>",
            &"x".repeat(129),
            "ünicode",
        ] {
            let response = call(bad).await;
            let id = header_id(&response);
            assert!(uuid_like(&id), "{bad:?} was kept as {id:?}");
        }
    });
}

#[test]
fn unmatched_routes_are_logged_at_debug() {
    let logs = logs();
    actix_web::rt::System::new().block_on(async {
        let app = app!();
        let request = http_test::TestRequest::get()
            .uri("/nowhere/at/all")
            .to_request();
        let response = http_test::call_service(&app, request).await;
        assert_eq!(response.status().as_u16(), 404);
    });
    let line = logs
        .lines_with("no route matched GET /nowhere/at/all")
        .pop()
        .unwrap();
    assert!(line.contains("[DEBUG   ]"), "{line}");
    assert!(logs.lines_with("hit /nowhere").is_empty());
    assert!(!logs.lines_with("request completed with 404").is_empty());
}
