//! Who reaches the management endpoints, over real HTTP to the example
//! service: changes refused off loopback without a token, the bearer
//! token (401, 403, 200 in every worker, never logged), a token file that
//! rotates, a management listener of its own shared by the workers,
//! `expose` and `public`, the OpenAPI document's security scheme, and
//! bad settings refused at start-up and on reload.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::Value;
use serve_common_tests::http_support::{Response, Service, get, request};

const PROGRAM: &str = env!("CARGO_BIN_EXE_example_service");
const TOKEN: &str = "tok-4711-very-secret";

fn start(config: &str) -> Service {
    Service::start(PROGRAM, config)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn post_level(address: SocketAddr, level: &str, authorization: Option<&str>) -> Response {
    post_level_at(address, "/manage/logging/level", level, authorization)
}

/// [`post_level`] at `path` (the same endpoint, spelled another way).
fn post_level_at(
    address: SocketAddr,
    path: &str,
    level: &str,
    authorization: Option<&str>,
) -> Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(authorization) = authorization {
        headers.push(("Authorization", authorization));
    }
    let body = format!(r#"{{"level": "{level}"}}"#);
    request(address, "POST", path, &headers, Some(&body))
}

/// A GET with `Authorization: Bearer <token>`.
fn get_bearer(address: SocketAddr, path: &str, token: &str) -> Response {
    let authorization = format!("Bearer {token}");
    request(
        address,
        "GET",
        path,
        &[("Authorization", &authorization)],
        None,
    )
}

/// `/manage/logging/level` percent-encoded as a client may send it (the
/// router decodes it).
const ENCODED_LEVEL_PATHS: [&str; 2] = ["/%6Danage/logging/level", "/manage/logging/%6Cevel"];

/// An error answer: its status, a JSON body repeating it, the message.
fn error_message(response: &Response, status: u16) -> String {
    assert_eq!(response.status, status, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        response.header("content-type")
    );
    let body = json(&response.body);
    assert_eq!(body["status"], status);
    body["error"].as_str().unwrap().to_owned()
}

/// Waits until each process of `pids` has logged a change of
/// `logging.level` after log line `from`.
fn level_changed_in(service: &Service, from: usize, pids: &BTreeSet<u32>) {
    const CHANGED: &str = "config changed path=logging.level";
    loop {
        let lines = service.log();
        let missing: Vec<&u32> = pids
            .iter()
            .filter(|pid| {
                let tag = format!("] [{pid}] ");
                !lines[from..]
                    .iter()
                    .any(|l| l.contains(&tag) && l.contains(CHANGED))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        // The next such line (or a failure naming the log after a while).
        service.wait_log_after(lines.len(), CHANGED);
    }
}

#[test]
fn off_loopback_changes_are_refused_and_say_how_to_allow_them() {
    let service = start("[server]\nbind = \"0.0.0.0:0\"\n[logging]\nlevel = \"INFO\"\n");
    let warning = service.wait_log("management changes (POST /manage/logging/...) are refused");
    assert!(warning.contains("WARN"), "{warning}");

    let refused = post_level(service.address, "TRACE", None);
    let message = error_message(&refused, 403);
    for needle in ["management.token", "management.bind", "not a loopback"] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    for path in ENCODED_LEVEL_PATHS {
        error_message(&post_level_at(service.address, path, "TRACE", None), 403);
    }
    // Any Authorization header is no better.
    let message = error_message(&post_level(service.address, "TRACE", Some("Bearer x")), 403);
    assert!(message.contains("management.token"), "{message}");
    let targets = request(
        service.address,
        "POST",
        "/manage/logging/targets",
        &[("Content-Type", "application/json")],
        Some(r#"{"target": "example_service", "level": "TRACE"}"#),
    );
    error_message(&targets, 403);

    // Reads stay open, health for load balancers above all.
    let level = get(service.address, "/manage/logging/level");
    assert_eq!(json(&level.body)["level"], "INFO");
    assert_eq!(get(service.address, "/manage/health").status, 200);
    assert_eq!(get(service.address, "/manage/version").status, 200);
    let line = service.wait_log("refused a management request");
    assert!(
        line.contains("peer=127.0.0.1:") && line.contains("path=/manage/logging/level"),
        "{line}"
    );
    assert!(
        !service.log().iter().any(|l| l.contains("config changed")),
        "a refused request changed the config"
    );
}

#[test]
fn a_token_guards_changes_and_they_reach_every_worker() {
    let config = format!(
        "[server]\nbind = \"0.0.0.0:0\"\nprocesses = 2\nworkers = 1\n\
         [logging]\nlevel = \"INFO\"\n[management]\ntoken = \"{TOKEN}\"\n"
    );
    let service = start(&config);
    let pids = service.worker_pids(2);

    let missing = post_level(service.address, "DEBUG", None);
    let message = error_message(&missing, 401);
    assert!(message.contains("Authorization: Bearer"), "{message}");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"management\"")
    );
    error_message(
        &post_level(service.address, "DEBUG", Some(&format!("Basic {TOKEN}"))),
        401,
    );
    let wrong = post_level(
        service.address,
        "DEBUG",
        Some("Bearer tok-4711-very-secreT"),
    );
    let message = error_message(&wrong, 403);
    assert!(message.contains("not the management token"), "{message}");
    let shorter = post_level(service.address, "DEBUG", Some("Bearer tok"));
    error_message(&shorter, 403);
    for path in ENCODED_LEVEL_PATHS {
        error_message(&post_level_at(service.address, path, "DEBUG", None), 401);
    }
    // Reads need no token.
    assert_eq!(get(service.address, "/manage/logging/level").status, 200);

    let before = service.log().len();
    let right = post_level(service.address, "DEBUG", Some(&format!("bearer  {TOKEN} ")));
    assert_eq!(right.status, 200, "{}", right.body);
    assert_eq!(json(&right.body)["level"], "DEBUG");
    level_changed_in(&service, before, &pids);
    // At DEBUG, requests log more: still no token anywhere.
    get(service.address, "/hello/ann");
    let before = service.log().len();
    let back = post_level(service.address, "INFO", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(back.status, 200, "{}", back.body);
    level_changed_in(&service, before, &pids);
    let log = service.log();
    assert!(
        log.iter()
            .any(|l| l.contains("refused a management request")),
        "refusals are logged"
    );
    let leaked: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("tok-4711") || l.contains("very-secret"))
        .collect();
    assert!(leaked.is_empty(), "the token is in the log: {leaked:?}");
}

#[test]
fn refusals_are_logged_at_most_five_times_in_ten_seconds() {
    let config = format!("[management]\ntoken = \"{TOKEN}\"\n");
    let service = start(&config);
    for _ in 0..20 {
        error_message(
            &post_level(service.address, "DEBUG", Some("Bearer no")),
            403,
        );
    }
    // A request after the refusals: its line comes after theirs.
    let marker = request(
        service.address,
        "GET",
        "/hello/after",
        &[("X-Request-Id", "after-refusals")],
        None,
    );
    assert_eq!(marker.status, 200);
    service.wait_log("[after-refusals ");
    let logged = service
        .log()
        .iter()
        .filter(|l| l.contains("refused a management request"))
        .count();
    assert_eq!(logged, 5, "{:#?}", service.log());
}

#[test]
fn a_token_file_guards_reads_too_and_follows_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let config = format!(
        "[management]\ntoken_file = \"{}\"\ntoken_for_reads = true\n",
        file.display()
    );
    let service = start(&config);
    for path in [
        "/manage/version",
        "/manage/health",
        "/",
        "/manage/logging/level",
    ] {
        let refused = get(service.address, path);
        error_message(&refused, 401);
        let allowed = get_bearer(service.address, path, "first-token");
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.body);
    }
    error_message(&get(service.address, "/%6Danage/version"), 401);
    // The application's routes need nothing.
    assert_eq!(get(service.address, "/hello/ann").status, 200);

    std::fs::write(&file, "second-token").unwrap();
    let old = get_bearer(service.address, "/manage/version", "first-token");
    error_message(&old, 403);
    let new = get_bearer(service.address, "/manage/version", "second-token");
    assert_eq!(new.status, 200, "{}", new.body);
    assert!(
        !service
            .log()
            .iter()
            .any(|l| l.contains("first-token") || l.contains("second-token")),
        "a token is in the log"
    );
}

#[test]
fn a_management_listener_of_its_own_is_shared_by_the_workers() {
    let service = start(
        "[server]\nbind = \"0.0.0.0:0\"\nprocesses = 2\nworkers = 1\n\
         [management]\nbind = \"127.0.0.1:0\"\n",
    );
    let pids = service.worker_pids(2);
    let management = service.management_address();
    assert_ne!(management.port(), service.address.port());

    // The public listener: the application, no management endpoint.
    for path in [
        "/",
        "/manage/health",
        "/manage/version",
        "/manage/spec",
        "/manage/docs/",
        "/%6Danage/health",
        "/manage/%76ersion",
    ] {
        let response = get(service.address, path);
        let message = error_message(&response, 404);
        assert_eq!(message, format!("no route for GET {path}"));
    }
    error_message(&post_level(service.address, "DEBUG", None), 404);
    for path in ENCODED_LEVEL_PATHS {
        error_message(&post_level_at(service.address, path, "DEBUG", None), 404);
    }
    // `/` is not the document on either listener (`public` does not name
    // `spec`), whatever the method.
    error_message(&request(service.address, "POST", "/", &[], Some("")), 404);
    error_message(&get(management, "/"), 404);
    assert_eq!(get(service.address, "/hello/ann").status, 200);

    // The management listener: management only, from every worker.
    assert_eq!(get(management, "/hello/ann").status, 404);
    let spec = json(&get(management, "/manage/spec").body);
    assert!(
        spec["paths"]["/hello/{name}"].is_object(),
        "the whole API is documented"
    );
    assert_eq!(get(management, "/manage/docs/").status, 200);
    let mut answered = BTreeSet::new();
    for _ in 0..2_000 {
        let health = json(&get(management, "/manage/health").body);
        answered.insert(health["pid"].as_u64().unwrap() as u32);
        if answered == pids {
            break;
        }
    }
    assert_eq!(answered, pids, "both workers serve the management listener");

    // Changes need no token there (it is the operators' listener), and
    // reach every worker.
    let before = service.log().len();
    let changed = post_level(management, "WARNING", None);
    assert_eq!(changed.status, 200, "{}", changed.body);
    level_changed_in(&service, before, &pids);
}

#[test]
fn expose_and_public_choose_what_is_served_where() {
    let service = start(
        "[management]\nbind = \"127.0.0.1:0\"\n\
         expose = [\"health\", \"version\", \"spec\"]\npublic = [\"health\"]\n",
    );
    let management = service.management_address();
    // Not exposed: 404 everywhere.
    for address in [management, service.address] {
        error_message(&get(address, "/manage/logging/level"), 404);
        error_message(&post_level(address, "DEBUG", None), 404);
        error_message(&get(address, "/manage/docs/"), 404);
    }
    // `public`: health on both listeners, the rest on the management one.
    assert_eq!(get(service.address, "/manage/health").status, 200);
    assert_eq!(get(management, "/manage/health").status, 200);
    error_message(&get(service.address, "/manage/version"), 404);
    assert_eq!(get(management, "/manage/version").status, 200);
    error_message(&get(service.address, "/"), 404);
    let spec = json(&get(management, "/manage/spec").body);
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.contains_key("/manage/health"));
    assert!(
        !paths
            .keys()
            .any(|p| p.starts_with("/manage/logging") || p.starts_with("/manage/docs")),
        "unexposed endpoints are documented: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_openapi_document_names_the_bearer_scheme_where_it_is_needed() {
    let service = start(&format!("[management]\ntoken = \"{TOKEN}\"\n"));
    let spec = json(&get(service.address, "/manage/spec").body);
    assert_eq!(
        spec["components"]["securitySchemes"]["managementToken"],
        json(
            r#"{"type": "http", "scheme": "bearer",
                "description": "The token of config `management.token` (or `management.token_file`)"}"#
        )
    );
    let post = &spec["paths"]["/manage/logging/level"]["post"];
    assert_eq!(post["security"], json(r#"[{"managementToken": []}]"#));
    assert!(post["responses"]["401"].is_object() && post["responses"]["403"].is_object());
    assert!(spec["paths"]["/manage/logging/targets"]["post"]["security"].is_array());
    for (path, method) in [
        ("/manage/logging/level", "get"),
        ("/manage/version", "get"),
        ("/hello/{name}", "get"),
    ] {
        assert!(
            spec["paths"][path][method]["security"].is_null(),
            "{method} {path} needs no token"
        );
    }
    // The document parses as OpenAPI 3 with the scheme.
    let document: openapiv3::OpenAPI = serde_json::from_value(spec).unwrap();
    assert!(
        document
            .components
            .unwrap()
            .security_schemes
            .contains_key("managementToken")
    );
}

/// Runs the example with `config`; it must exit non-zero: its stderr.
fn start_fails(config: &str) -> String {
    serve_common_tests::http_support::start_fails(PROGRAM, config)
}

#[test]
fn bad_management_settings_stop_the_start_with_a_clear_error() {
    let unknown = start_fails("[management]\nexpose = [\"health\", \"metricz\"]\n");
    assert!(
        unknown.contains("\"metricz\"")
            && unknown.contains("known: health, version, spec, docs, logging, metrics"),
        "{unknown}"
    );
    let missing = start_fails("[management]\ntoken_file = \"/nonexistent/serve-common-token\"\n");
    assert!(
        missing.contains("cannot read `token_file` /nonexistent/serve-common-token"),
        "{missing}"
    );
    let typo = start_fails("[management]\ntokn = \"abc\"\n");
    assert!(typo.contains("unknown field `tokn`"), "{typo}");
    let unquoted = start_fails("[management]\ntoken = s3cr3t-unquoted\n");
    assert!(
        unquoted.contains("line 2") && !unquoted.contains("s3cr3t-unquoted"),
        "{unquoted}"
    );
    let wrong_type = start_fails("[management]\ntoken = 987654321\n");
    assert!(
        wrong_type.contains("management.token") && !wrong_type.contains("987654321"),
        "{wrong_type}"
    );
}

#[test]
fn a_bad_management_edit_is_refused_and_the_token_still_holds() {
    let service = start(&format!("[management]\ntoken = \"{TOKEN}\"\n"));
    let before = service.log().len();
    std::fs::write(
        service.config_path(),
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[management]\ntoken = \"{TOKEN}\"\n\
             expose = [\"everything\"]\n"
        ),
    )
    .unwrap();
    let refused = service.wait_log_after(before, "\"everything\"");
    assert!(refused.contains("known:"), "{refused}");
    error_message(&post_level(service.address, "DEBUG", None), 401);
    let allowed = post_level(service.address, "DEBUG", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(allowed.status, 200, "{}", allowed.body);

    // A good edit changes the token at once.
    let before = service.log().len();
    std::fs::write(
        service.config_path(),
        "[server]\nbind = \"127.0.0.1:0\"\n[management]\ntoken = \"rotated-one\"\n",
    )
    .unwrap();
    service.wait_log_after(before, "config changed path=management.token");
    error_message(
        &post_level(service.address, "INFO", Some(&format!("Bearer {TOKEN}"))),
        403,
    );
    let rotated = post_level(service.address, "INFO", Some("Bearer rotated-one"));
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(
        !service
            .log()
            .iter()
            .any(|l| l.contains("rotated-one") || l.contains(TOKEN)),
        "a token is in the log"
    );
}

#[test]
fn a_token_from_the_environment_is_text_even_when_it_reads_as_a_number() {
    let service = Service::start_with(PROGRAM, "", |command| {
        command.env("SERVE_COMMON__MANAGEMENT__TOKEN", "12345678");
    });
    error_message(&post_level(service.address, "DEBUG", None), 401);
    let allowed = post_level(service.address, "DEBUG", Some("Bearer 12345678"));
    assert_eq!(allowed.status, 200, "{}", allowed.body);
}
