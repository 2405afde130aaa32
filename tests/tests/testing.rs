//! `serve_common::testing` used as a team would on its own service: the
//! tests of this file run in parallel (libtest's threads), under both
//! test macros, each with its own config; a config edit, a log line and
//! its request id, an event wait, a graceful stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serve_common::default::actix::{self, ApiError, web};
use serve_common::prelude::*;
use serve_common::testing::{self, TestError, TestService};

/// What `/whoami` answers: config `app.name`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
struct Name {
    name: String,
}

/// A job, and the event that says it ran.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, ApiComponent)]
struct Job {
    id: u64,
}

#[api_operation(summary = "The configured name")]
async fn whoami() -> Result<web::Json<Name>, ApiError> {
    Ok(web::Json(Name {
        name: config().get_or("app.name", String::new()),
    }))
}

#[api_operation(summary = "Run a job")]
async fn run_job(job: web::Json<Job>) -> Result<web::Json<Job>, ApiError> {
    tracing::info!(id = job.id, "job accepted");
    serve_common::event::notify("job.done", job.clone());
    Ok(job)
}

/// Released by the graceful-stop test once the stop has begun.
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[api_operation(summary = "Answer once released")]
async fn slow() -> Result<web::Json<Name>, ApiError> {
    tracing::info!("slow started");
    RELEASE.notified().await;
    Ok(web::Json(Name {
        name: "done".to_owned(),
    }))
}

fn routes(app: actix::App) -> actix::App {
    app.service(actix::resource("/whoami").route(actix::get().to(whoami)))
        .service(actix::resource("/jobs").route(actix::post().to(run_job)))
        .service(actix::resource("/slow").route(actix::get().to(slow)))
}

async fn start(name: &str) -> TestService {
    let config = format!("[app]\nname = \"{name}\"\n");
    let service = TestService::start(actix::service(routes), &config)
        .await
        .expect("the service starts");
    // A fresh config: the runtime sets of an earlier test's service are
    // gone.
    assert_eq!(
        service.config().get_opt::<String>("app.leftover").unwrap(),
        None,
        "a runtime set of another test's service leaked into this one"
    );
    service.config().set("app.leftover", name).unwrap();
    service
}

#[actix_web::test]
async fn config_edits_logs_and_events_under_actix_test() {
    let service = start("actix").await;
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "actix");

    // An event waited for, made before the request that notifies it.
    let done = testing::expect_event("job.done").unwrap();
    let response = service
        .post("/jobs")
        .header("X-Request-Id", "job-request-7")
        .json(&Job { id: 7 })
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text());
    assert_eq!(response.request_id(), Some("job-request-7"));
    let event = done.await.unwrap();
    assert_eq!(event.payload::<Job>().unwrap().id, 7);

    // The handler's line, with its field and the request's id.
    let line = service
        .wait_for_log(|line| line.message() == Some("job accepted"))
        .await
        .unwrap();
    assert_eq!(line.request_id(), Some("job-request-7"), "{line}");
    assert_eq!(line.field("id").and_then(|v| v.as_u64()), Some(7));
    assert_eq!(line.level(), "INFO");

    // An edit, applied when edit_config returns.
    service
        .edit_config("[app]\nname = \"edited\"\n")
        .await
        .unwrap();
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "edited");

    // A bad edit is the config's error; the old config stays.
    let bad = service.edit_config("[app\nname = 1\n").await;
    assert!(matches!(bad, Err(TestError::Config(_))), "{bad:?}");
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "edited");

    // An edit the file watcher finds, as in production.
    let changed = testing::expect_config_change("app.name").unwrap();
    service.write_config("[app]\nname = \"watched\"\n").unwrap();
    changed.within(Duration::from_secs(10)).await.unwrap();
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "watched");

    // A JSON helper refuses a non-2xx answer, naming it.
    let missing = service.get_json::<Name>("/no/such/route").await;
    match missing {
        Err(TestError::Status { status, body, .. }) => {
            assert_eq!(status, 404);
            assert!(body.contains("\"error\""), "{body}");
        }
        other => panic!("expected a 404: {other:?}"),
    }
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_finishes_in_flight_requests_under_tokio_test() {
    let service = start("tokio").await;
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "tokio");
    let ready = service.get("/manage/health/ready").send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text());

    let logs = service.logs();
    let in_flight = tokio::spawn(service.get("/slow").send());
    logs.wait_for(|line| line.message() == Some("slow started"))
        .await
        .unwrap();
    let stopping = tokio::spawn(service.stop());
    logs.wait_for(|line| {
        line.message()
            .is_some_and(|m| m.contains("finishing in-flight requests"))
    })
    .await
    .unwrap();
    RELEASE.notify_one();
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text());
    assert_eq!(answer.json::<Name>().unwrap().name, "done");
    stopping.await.unwrap().unwrap();
    logs.wait_for(|line| line.message() == Some("stopped"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_starts_nothing_and_one_service_per_test() {
    let refused = TestService::start(actix::service(routes), "[server]\nworkers = 0\n").await;
    match refused {
        Err(TestError::Config(error)) => {
            assert!(error.to_string().contains("workers"), "{error}");
        }
        other => panic!("expected the config's error: {other:?}"),
    }
    let service = start("multi").await;
    let second = TestService::start(actix::service(routes), "").await;
    assert!(
        matches!(second, Err(TestError::AlreadyRunning)),
        "{second:?}"
    );
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "multi");
    drop(service);
    // Dropped: the next service can start in this test.
    let again = start("again").await;
    let me: Name = again.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "again");
}

#[tokio::test]
async fn a_clash_of_operation_ids_is_a_start_up_error_naming_both() {
    let twice = |app: actix::App| {
        app.service(actix::resource("/whoami").route(actix::get().to(whoami)))
            .service(actix::resource("/me").route(actix::get().to(whoami)))
    };
    let refused = TestService::start(actix::service(twice), "").await;
    let Err(TestError::Start(error)) = refused else {
        panic!("expected a start-up error: {refused:?}");
    };
    let error = error.to_string();
    assert!(
        error.contains("`whoami` names GET /me and GET /whoami"),
        "{error}"
    );
    assert!(
        error.contains("operation_id"),
        "says how to fix it: {error}"
    );
    // Nothing left running: the next start works.
    let service = start("after the clash").await;
    let me: Name = service.get_json("/whoami").await.unwrap();
    assert_eq!(me.name, "after the clash");
}

#[tokio::test]
async fn the_start_s_own_config_lines_are_in_its_logs_every_time() {
    for _ in 0..2 {
        let service = TestService::start(actix::service(routes), "[server]\nworker = 1\n")
            .await
            .unwrap();
        // Warned about at each start (a fresh slate), and in this
        // service's lines.
        let line = service
            .wait_for_log(|line| {
                line.message()
                    .is_some_and(|m| m.contains("unknown config key `server.worker`"))
            })
            .await
            .unwrap();
        assert_eq!(line.level(), "WARN", "{line}");
        service.stop().await.unwrap();
    }
}
