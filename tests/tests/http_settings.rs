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
    let service = Service::start(
        PROGRAM,
        "[server]\nmax_body_bytes = 100\nrequest_timeout = 2.5\n",
    );
    let health = json(&request(service.address, "GET", "/manage/health", &[], None).body);
    assert_eq!(health["http"]["max_body_bytes"], 100, "{health}");
    assert_eq!(health["http"]["request_timeout_ms"], 2500, "{health}");
    assert_eq!(health["http"]["compress"], false, "{health}");
    // Every setting of the request path, defaults filled in.
    assert_eq!(
        health["http"]["client_request_timeout_ms"], 5000,
        "{health}"
    );
    assert_eq!(
        health["http"]["client_disconnect_timeout_ms"], 1000,
        "{health}"
    );
    assert_eq!(health["http"]["keep_alive_ms"], 5000, "{health}");
    assert_eq!(
        health["http"]["forwarded_header"], "x-forwarded-for",
        "{health}"
    );
    assert_eq!(
        health["http"]["trusted_proxies"],
        serde_json::json!([]),
        "{health}"
    );
    assert_eq!(
        health["http"]["cors_supports_credentials"], false,
        "{health}"
    );
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

/// A request's raw response: status, headers (lower-case names), body
/// bytes (compressed bodies are not text).
fn raw(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Read;
    let mut stream =
        serve_common_tests::http_support::send_request(address, method, path, headers, None);
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    (status, headers, body)
}

/// A chunked body's data.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line_end = chunked
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&chunked[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        chunked = &chunked[line_end + 2..];
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&chunked[..size]);
        chunked = &chunked[size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn responses_are_compressed_as_the_client_asks_above_the_minimum_only() {
    let service = Service::start(
        PROGRAM,
        "[server]\ncompress = true\ncompress_min_bytes = 100\n",
    );
    let (status, headers, body) = raw(
        service.address,
        "GET",
        "/text/5000",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-encoding"),
        Some("gzip"),
        "{headers:?}"
    );
    assert!(body.len() < 5000, "{} bytes", body.len());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
        .expect("a gzip body");
    assert_eq!(text, format!("\"{}\"", "a".repeat(5000)));

    for (accept, expected) in [("br", "br"), ("zstd", "zstd")] {
        let (status, headers, _) = raw(
            service.address,
            "GET",
            "/text/5000",
            &[("Accept-Encoding", accept)],
        );
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-encoding"),
            Some(expected),
            "{headers:?}"
        );
    }
    // Under the minimum: as it is, without a Content-Encoding at all.
    let (status, headers, body) = raw(
        service.address,
        "GET",
        "/text/10",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), None, "{headers:?}");
    assert_eq!(body, format!("\"{}\"", "a".repeat(10)).as_bytes());
    // A client that asks for nothing gets nothing compressed.
    let (_, headers, body) = raw(service.address, "GET", "/text/5000", &[]);
    assert_eq!(header(&headers, "content-encoding"), None, "{headers:?}");
    assert_eq!(body.len(), 5002);
}

#[test]
fn without_compress_nothing_is_compressed() {
    let service = Service::start(PROGRAM, "");
    let (_, headers, body) = raw(
        service.address,
        "GET",
        "/text/5000",
        &[("Accept-Encoding", "gzip, br")],
    );
    assert_eq!(header(&headers, "content-encoding"), None, "{headers:?}");
    assert_eq!(body.len(), 5002);
}

#[test]
fn cors_answers_preflights_and_marks_responses_for_the_allowed_origins_only() {
    let service = Service::start(
        PROGRAM,
        "[server.cors]\nallowed_origins = [\"https://app.example.com\"]\nallowed_methods = [\"GET\", \"POST\"]\nmax_age = 600\n",
    );
    let origin = ("Origin", "https://app.example.com");
    let preflight = request(
        service.address,
        "OPTIONS",
        "/echo",
        &[
            origin,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    );
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{preflight:?}"
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));

    let actual = request(service.address, "GET", "/slow/1", &[origin], None);
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        actual
            .header("access-control-expose-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("x-request-id")),
        "{actual:?}"
    );

    assert!(
        actual
            .header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{actual:?}"
    );

    // No Origin (not a browser's cross-origin request): no CORS headers,
    // but `Vary: Origin`, so a cache does not hand it to a page.
    let plain = request(service.address, "GET", "/slow/1", &[], None);
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(
        plain.header("access-control-allow-origin"),
        None,
        "{plain:?}"
    );
    assert_eq!(
        plain.header("access-control-expose-headers"),
        None,
        "{plain:?}"
    );
    assert!(
        plain
            .headers
            .iter()
            .any(|(name, value)| name == "vary" && value.eq_ignore_ascii_case("origin")),
        "{plain:?}"
    );

    // Another origin: answered without an allowance, so its page cannot
    // read the response (the browser enforces it).
    let other = request(
        service.address,
        "GET",
        "/slow/1",
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
    // A method not listed, in a preflight: refused.
    let delete = request(
        service.address,
        "OPTIONS",
        "/echo",
        &[origin, ("Access-Control-Request-Method", "DELETE")],
        None,
    );
    assert_eq!(delete.status, 400, "{delete:?}");
    assert_eq!(json(&delete.body)["status"], 400, "{delete:?}");

    // The operator sees what the process serves with.
    let health = json(&request(service.address, "GET", "/manage/health", &[], None).body);
    assert_eq!(
        health["http"]["cors_allowed_origins"],
        serde_json::json!(["https://app.example.com"]),
        "{health}"
    );
    assert_eq!(
        health["http"]["cors_allowed_methods"],
        serde_json::json!(["GET", "POST"]),
        "{health}"
    );
    assert_eq!(health["http"]["cors_max_age"], 600, "{health}");
}

#[test]
fn without_cors_no_cors_headers_are_sent() {
    let service = Service::start(PROGRAM, "");
    let response = request(
        service.address,
        "GET",
        "/slow/1",
        &[("Origin", "https://app.example.com")],
        None,
    );
    assert_eq!(response.status, 200);
    assert!(
        !response
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-")),
        "{response:?}"
    );
}

#[test]
fn bad_cors_settings_stop_the_start_with_the_key_named() {
    for (config, needle) in [
        (
            "[server.cors]\nallowed_origins = [\"app.example.com\"]\n",
            "cors.allowed_origins",
        ),
        (
            "[server.cors]\nallowed_origins = [\"https://a.example/path\"]\n",
            "cors.allowed_origins",
        ),
        (
            "[server.cors]\nallowed_origins = []\n",
            "cors.allowed_origins",
        ),
        (
            "[server.cors]\nallowed_origins = [\"https://App.example.com\"]\n",
            "lower-case",
        ),
        (
            "[server.cors]\nallowed_origins = [\"https://app.example.com:443\"]\n",
            "default port",
        ),
        (
            "[server.cors]\nallowed_origins = [\"*\"]\nsupports_credentials = true\n",
            "cors.supports_credentials",
        ),
        (
            "[server.cors]\nallowed_origins = [\"*\"]\nallowed_methods = [\"G ET\"]\n",
            "cors.allowed_methods",
        ),
        (
            "[server.cors]\nallowed_origin = [\"*\"]\n",
            "allowed_origin",
        ),
    ] {
        let stderr = start_fails(PROGRAM, config);
        assert!(stderr.contains(needle), "{config}: {stderr}");
    }
}

#[test]
fn the_client_address_comes_from_forwarded_headers_of_trusted_proxies_only() {
    let forwarded = [("X-Forwarded-For", "203.0.113.7, 127.0.0.1")];
    let trusted = Service::start(PROGRAM, "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    assert_eq!(
        request(trusted.address, "GET", "/slow/1", &forwarded, None).status,
        200
    );
    let line = trusted.wait_log("hit /slow/1");
    assert!(line.contains("client=203.0.113.7"), "{line}");
    // A Forwarded header passed through from the client is not read: the
    // proxies write X-Forwarded-For (the default `forwarded_header`).
    let spoofed = [
        ("Forwarded", "for=1.2.3.4"),
        ("X-Forwarded-For", "203.0.113.8"),
    ];
    assert_eq!(
        request(trusted.address, "GET", "/slow/2", &spoofed, None).status,
        200
    );
    let line = trusted.wait_log("hit /slow/2");
    assert!(line.contains("client=203.0.113.8"), "{line}");
    let rfc = Service::start(
        PROGRAM,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"\n",
    );
    let header = [("Forwarded", "for=\"[2001:db8::1]:4711\"")];
    assert_eq!(
        request(rfc.address, "GET", "/slow/3", &header, None).status,
        200
    );
    let line = rfc.wait_log("hit /slow/3");
    assert!(line.contains("client=2001:db8::1"), "{line}");
    let health = json(&request(rfc.address, "GET", "/manage/health", &[], None).body);
    assert_eq!(
        health["http"]["trusted_proxies"],
        serde_json::json!(["127.0.0.1"]),
        "{health}"
    );
    assert_eq!(health["http"]["forwarded_header"], "forwarded", "{health}");

    // Without trusted proxies, anyone's header is ignored.
    let plain = Service::start(PROGRAM, "");
    assert_eq!(
        request(plain.address, "GET", "/slow/1", &forwarded, None).status,
        200
    );
    let line = plain.wait_log("hit /slow/1");
    assert!(line.contains("client=127.0.0.1"), "{line}");

    let stderr = start_fails(PROGRAM, "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
    assert!(stderr.contains("trusted_proxies"), "{stderr}");
}
