//! The HTTP settings of `[server]`, each over real HTTP to a real process
//! (tests/src/bin/probe_service.rs): body limits, the request timeout, the
//! connection timeouts' validation.

use std::time::{Duration, Instant};

use serde_json::Value;
use serve_common_tests::http_support::{Service, post_json, request, start_fails};

const PROGRAM: &str = env!("CARGO_BIN_EXE_probe_service");

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A `{"text": ..}` body of `len` bytes in all.
fn json_of_len(len: usize) -> String {
    format!("{{\"text\":\"{}\"}}", "x".repeat(len - 11))
}

#[test]
fn bodies_over_max_body_bytes_get_a_413_json_body_for_every_extractor() {
    let service = Service::start(PROGRAM, "[server]\nmax_body_bytes = 100\n");
    let small = post_json(service.address, "/echo", &json_of_len(100));
    assert_eq!(small.status, 200, "{}", small.body);
    assert_eq!(json(&small.body), 100 - 11);

    for (path, content_type) in [
        ("/echo", "application/json"),
        ("/bytes", "application/octet-stream"),
    ] {
        let big = request(
            service.address,
            "POST",
            path,
            &[("Content-Type", content_type)],
            Some(&json_of_len(101)),
        );
        assert_eq!(big.status, 413, "{path}: {}", big.body);
        assert!(
            big.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "{path}: {:?}",
            big.headers
        );
        let body = json(&big.body);
        assert_eq!(body["status"], 413, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

#[test]
fn the_default_body_limit_is_two_mebibytes_for_raw_bodies_too() {
    let service = Service::start(PROGRAM, "");
    // Over actix's own default for raw bodies (256 KiB), under ours.
    let body = "y".repeat(1024 * 1024);
    let raw = request(service.address, "POST", "/bytes", &[], Some(&body));
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(json(&raw.body), 1024 * 1024);
    let too_big = "y".repeat(2 * 1024 * 1024 + 1);
    let refused = request(service.address, "POST", "/bytes", &[], Some(&too_big));
    assert_eq!(refused.status, 413, "{}", refused.body);
}

#[test]
fn a_request_past_the_timeout_gets_a_503_and_its_handler_is_dropped() {
    let service = Service::start(PROGRAM, "[server]\nrequest_timeout = 0.3\n");
    let started = Instant::now();
    let late = request(service.address, "GET", "/slow/5000", &[], None);
    let took = started.elapsed();
    assert_eq!(late.status, 503, "{}", late.body);
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    let body = json(&late.body);
    assert_eq!(body["status"], 503);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("300 ms") && error.contains("request id "),
        "{body}"
    );
    // The handler's future was dropped, not left running; the service
    // says why it answered 503.
    service.wait_log("slow request dropped");
    let line = service.wait_log("server.request_timeout");
    assert!(
        line.contains("/slow/5000") && line.contains("WARN"),
        "{line}"
    );

    let quick = request(service.address, "GET", "/slow/10", &[], None);
    assert_eq!(quick.status, 200, "{}", quick.body);
}

#[test]
fn bad_http_settings_stop_the_start_with_the_key_named() {
    for (config, key) in [
        ("[server]\nrequest_timeout = -1\n", "request_timeout"),
        ("[server]\nrequest_timeout = 0\n", "request_timeout"),
        ("[server]\nkeep_alive = -2.5\n", "keep_alive"),
        (
            "[server]\nclient_request_timeout = \"soon\"\n",
            "client_request_timeout",
        ),
        ("[server]\nmax_body_bytes = 0\n", "max_body_bytes"),
    ] {
        let stderr = start_fails(PROGRAM, config);
        assert!(stderr.contains(key), "{config}: {stderr}");
    }
}
