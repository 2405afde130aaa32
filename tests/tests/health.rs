//! Liveness and readiness over real HTTP: normal running, failing and
//! slow checks, a stuck event dispatcher, a graceful stop with a request
//! in flight; and the start-up phase of an app run in a server of one's own.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use serve_common_tests::http_support::{Response, Service, get};

fn start(config: &str) -> Service {
    Service::start(env!("CARGO_BIN_EXE_probe_service"), config)
}

fn json(response: &Response) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

fn edit(service: &Service, config: &str, needle: &str) {
    let from = service.log().len();
    let text = format!("{config}\n[server]\nbind = \"{}\"\n", service.address);
    std::fs::write(service.config_path(), text).unwrap();
    service.wait_log_after(from, needle);
}

#[test]
fn both_probes_pass_while_the_service_runs() {
    let service = start("");
    let live = get(service.address, "/manage/health/live");
    assert_eq!(live.status, 200, "{}", live.body);
    let body = json(&live);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["event_dispatcher"]["ok"], true);
    assert_eq!(body["checks"]["heart"]["kind"], "liveness");
    assert!(
        body["checks"].get("slow").is_none(),
        "readiness checks stay out: {body}"
    );
    let ready = get(service.address, "/manage/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = json(&ready);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["phase"], "ready");
    assert_eq!(body["checks"]["slow"]["kind"], "readiness");
    assert!(body["checks"].get("heart").is_none(), "{body}");
    // The detailed view has every check, with durations.
    let health = json(&get(service.address, "/manage/health"));
    assert!(
        health["checks"]["heart"]["duration_ms"].as_f64().is_some(),
        "{health}"
    );
    assert!(
        health["checks"]["slow"]["duration_ms"].as_f64().is_some(),
        "{health}"
    );
    // Both are in the OpenAPI document.
    let spec = json(&get(service.address, "/manage/spec"));
    assert!(spec["paths"]["/manage/health/live"]["get"].is_object());
    assert!(spec["paths"]["/manage/health/ready"]["get"].is_object());
}

#[test]
fn a_failing_liveness_check_fails_live_only() {
    let service = start("");
    edit(&service, "[probe]\nlive_fails = true\n", "config reloaded");
    let live = get(service.address, "/manage/health/live");
    assert_eq!(live.status, 503, "{}", live.body);
    let body = json(&live);
    assert_eq!(body["status"], "failing");
    assert_eq!(body["checks"]["heart"]["error"], "the heart stopped");
    assert_eq!(get(service.address, "/manage/health/ready").status, 200);
    edit(&service, "[probe]\nlive_fails = false\n", "config reloaded");
    assert_eq!(get(service.address, "/manage/health/live").status, 200);
}

#[test]
fn a_slow_check_is_reported_failing_after_its_timeout_not_waited_for() {
    let service = start("[probe]\nslow_check_ms = 3000\n");
    let started = Instant::now();
    let ready = get(service.address, "/manage/health/ready");
    let took = started.elapsed();
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = json(&ready);
    assert_eq!(body["status"], "failing");
    assert_eq!(body["checks"]["slow"]["error"], "timed out after 300 ms");
    assert!(took < Duration::from_millis(2500), "waited {took:?}");
    // The run still going is not started again.
    let again = json(&get(service.address, "/manage/health/ready"));
    let error = again["checks"]["slow"]["error"].as_str().unwrap();
    assert!(error.starts_with("still running"), "{again}");
    // Liveness does not run readiness checks.
    assert_eq!(get(service.address, "/manage/health/live").status, 200);
}

#[test]
fn a_stuck_event_dispatcher_fails_live() {
    let service = start("");
    assert_eq!(get(service.address, "/block/2500").status, 200);
    let live = get(service.address, "/manage/health/live");
    assert_eq!(live.status, 503, "{}", live.body);
    let body = json(&live);
    let error = body["checks"]["event_dispatcher"]["error"]
        .as_str()
        .unwrap();
    assert!(error.contains("did not answer"), "{body}");
    // Once the handler returns, the dispatcher answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(service.address, "/manage/health/live").status != 200 {
        assert!(Instant::now() < deadline, "live never came back");
    }
}

#[test]
fn ready_is_503_from_sigterm_while_an_inflight_request_completes() {
    let mut service = start("[server]\ndrain_seconds = 2\nshutdown_timeout = 10\n");
    let address = service.address;
    let inflight = std::thread::spawn(move || get(address, "/slow/2500"));
    service.wait_log("hit /slow/2500");
    service.signal(Signal::SIGTERM);
    service.wait_log("readiness is 503");
    let ready = get(service.address, "/manage/health/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = json(&ready);
    assert_eq!(body["status"], "stopping");
    assert_eq!(body["phase"], "stopping");
    // Still serving while draining; liveness holds.
    assert_eq!(get(service.address, "/manage/health/live").status, 200);
    let done = inflight.join().unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(service.wait_exit().success());
}

#[test]
fn an_app_in_a_server_of_ones_own_is_starting_until_marked_ready() {
    use actix_web::test as http_test;
    use serve_common::default::{actix, management};
    let _ = serve_common::config::init(serve_common::config::Config::builder().no_file().no_env());
    actix_web::rt::System::new().block_on(async {
        let app = http_test::init_service(actix::service(|app| app).app().await).await;
        macro_rules! ready {
            () => {{
                let request = http_test::TestRequest::get()
                    .uri("/manage/health/ready")
                    .to_request();
                let response = http_test::call_service(&app, request).await;
                let status = response.status().as_u16();
                let body: Value = http_test::read_body_json(response).await;
                (
                    status,
                    body["status"].as_str().unwrap_or_default().to_owned(),
                )
            }};
        }
        assert_eq!(ready!(), (503, "starting".to_owned()));
        management::mark_ready();
        assert_eq!(ready!(), (200, "ok".to_owned()));
        management::mark_stopping();
        assert_eq!(ready!(), (503, "stopping".to_owned()));
    });
}
