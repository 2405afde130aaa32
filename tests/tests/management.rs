//! The management endpoints of the example service, over real HTTP to a
//! real process: every endpoint, every bad input, the OpenAPI document,
//! request ids, and the docs page in headless Chromium.

use serde_json::Value;
use serve_common_tests::http_support::{Service, get, output_within, post_json, request};

fn start(config: &str) -> Service {
    Service::start(env!("CARGO_BIN_EXE_example_service"), config)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

const MANAGEMENT_PATHS: [&str; 7] = [
    "/",
    "/manage/spec",
    "/manage/version",
    "/manage/health",
    "/manage/logging/level",
    "/manage/logging/targets",
    "/manage/docs",
];

#[test]
fn the_openapi_document_is_served_at_both_paths_and_lists_every_route() {
    let service = start("");
    let root = get(service.address, "/");
    let spec = get(service.address, "/manage/spec");
    assert_eq!(root.status, 200);
    assert_eq!(spec.status, 200);
    assert!(
        root.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        json(&root.body),
        json(&spec.body),
        "/ and /manage/spec differ"
    );

    let document: openapiv3::OpenAPI =
        serde_json::from_str(&spec.body).expect("an OpenAPI 3 document");
    assert!(
        document.openapi.starts_with("3."),
        "version {}",
        document.openapi
    );
    assert_eq!(document.info.version, env!("CARGO_PKG_VERSION"));
    let paths: Vec<&String> = document.paths.paths.keys().collect();
    for path in MANAGEMENT_PATHS
        .iter()
        .chain(&["/hello/{name}", "/greeting"])
    {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} missing from {paths:?}"
        );
    }
    for path in MANAGEMENT_PATHS {
        let item = document.paths.paths[path].as_item().unwrap();
        let operations: Vec<_> = item.iter().collect();
        assert!(!operations.is_empty(), "{path} has no operation");
        for (method, operation) in operations {
            assert_eq!(operation.tags, ["management"], "{method} {path}");
        }
    }
    let level = document.paths.paths["/manage/logging/level"]
        .as_item()
        .unwrap();
    assert!(level.get.is_some() && level.post.is_some());
    let post = level.post.as_ref().unwrap();
    assert!(post.request_body.is_some(), "the POST body is documented");
    // What a generated client would send and get is what the service takes
    // and answers: level names as an enum, the version as text.
    let raw = json(&spec.body);
    let version = &raw["paths"]["/manage/version"]["get"]["responses"]["200"]["content"];
    assert!(
        version.get("text/plain; charset=utf-8").is_some(),
        "{version}"
    );
    assert!(version.get("application/json").is_none(), "{version}");
    let level_schema = raw["components"]["schemas"]["LevelChange"]["properties"]["level"].clone();
    let names = level_schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{level_schema}"));
    assert!(
        names.contains(&Value::from("DEBUG")) && names.contains(&Value::Null),
        "{level_schema}"
    );
    for name in names.iter().filter_map(Value::as_str) {
        let answer = post_json(
            service.address,
            "/manage/logging/level",
            &format!("{{\"level\":\"{name}\"}}"),
        );
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    let reset = post_json(service.address, "/manage/logging/level", "{\"level\":null}");
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert!(
        post.responses
            .responses
            .contains_key(&openapiv3::StatusCode::Code(400))
    );
    // The POST body documents the null that resets the level.
    let spec_json = json(&spec.body);
    let change = &spec_json["components"]["schemas"]["LevelChange"];
    assert_eq!(change["properties"]["level"]["nullable"], true, "{change}");
    assert!(
        change["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|f| f == "level")),
        "{change}"
    );
    let hello = document.paths.paths["/hello/{name}"].as_item().unwrap();
    assert_eq!(hello.get.as_ref().unwrap().tags, ["greetings"]);
    assert!(
        document
            .components
            .unwrap()
            .schemas
            .contains_key("ErrorBody")
    );
}

#[test]
fn version_is_text() {
    let service = start("");
    let version = get(service.address, "/manage/version");
    assert_eq!(version.status, 200);
    assert!(
        version
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(version.body, env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_level_is_read_and_changed_through_config() {
    let service = start("[logging]\nlevel = \"info\"\n");
    let level = get(service.address, "/manage/logging/level");
    assert_eq!(level.status, 200);
    assert_eq!(json(&level.body), json(r#"{"level": "INFO"}"#));

    let changed = post_json(
        service.address,
        "/manage/logging/level",
        r#"{"level": "debug"}"#,
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(json(&changed.body), json(r#"{"level": "DEBUG"}"#));
    service.wait_log("config changed path=logging.level old=\"info\" new=\"DEBUG\"");
    let level = get(service.address, "/manage/logging/level");
    assert_eq!(json(&level.body)["level"], "DEBUG");
    // DEBUG lines now appear: an unmatched route is logged at DEBUG.
    let before = service.log().len();
    get(service.address, "/no/such/route");
    service.wait_log_after(before, "[DEBUG   ]");
}

#[test]
fn bad_level_bodies_are_400_json_naming_the_problem_and_change_nothing() {
    let service = start("[logging]\nlevel = \"INFO\"\n");
    let cases: [(&str, Option<&str>, &str); 7] = [
        (
            r#"{"level": "#,
            Some("application/json"),
            "EOF while parsing",
        ),
        ("{}", Some("application/json"), "missing field `level`"),
        (
            r#"{"level": 5}"#,
            Some("application/json"),
            "invalid type: integer `5`",
        ),
        (
            r#"{"level": "NOPE"}"#,
            Some("application/json"),
            "unknown log level \"NOPE\"",
        ),
        (
            r#"{"level": ["INFO"]}"#,
            Some("application/json"),
            "invalid type: sequence",
        ),
        (
            r#"{"level": "INFO", "extra": 1}"#,
            Some("application/json"),
            "unknown field `extra`",
        ),
        (
            r#"{"level": "DEBUG"}"#,
            None,
            "Content-Type: application/json",
        ),
    ];
    for (body, content_type, problem) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("Content-Type", c))
            .into_iter()
            .collect();
        let response = request(
            service.address,
            "POST",
            "/manage/logging/level",
            &headers,
            Some(body),
        );
        assert!(
            (400..500).contains(&response.status),
            "{body}: status {} {}",
            response.status,
            response.body
        );
        assert!(
            response
                .header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let error = json(&response.body);
        assert_eq!(error["status"], response.status, "{body}");
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains(problem),
            "{body}: {message:?} does not say {problem:?}"
        );
        let level = get(service.address, "/manage/logging/level");
        assert_eq!(
            json(&level.body)["level"],
            "INFO",
            "{body} changed the level"
        );
    }
    let file = std::fs::read_to_string(service.config_path()).unwrap();
    assert!(file.contains("level = \"INFO\""));
    assert!(
        !service.log().iter().any(|l| l.contains("config changed")),
        "something was set"
    );
}

#[test]
fn per_target_levels_are_read_changed_and_validated() {
    let service = start("");
    let targets = get(service.address, "/manage/logging/targets");
    assert_eq!(json(&targets.body), json(r#"{"targets": {}}"#));

    let set = post_json(
        service.address,
        "/manage/logging/targets",
        r#"{"target": "example_service", "level": "warning"}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        json(&set.body),
        json(r#"{"targets": {"example_service": "WARNING"}}"#)
    );
    let targets = get(service.address, "/manage/logging/targets");
    assert_eq!(json(&targets.body)["targets"]["example_service"], "WARNING");

    for bad in [
        r#"{"target": "not a target!", "level": "DEBUG"}"#,
        r#"{"target": "example_service", "level": "LOUD"}"#,
        r#"{"level": "DEBUG"}"#,
    ] {
        let response = post_json(service.address, "/manage/logging/targets", bad);
        assert_eq!(response.status, 400, "{bad}: {}", response.body);
        assert!(json(&response.body)["error"].is_string());
    }
    let targets = get(service.address, "/manage/logging/targets");
    assert_eq!(
        json(&targets.body),
        json(r#"{"targets": {"example_service": "WARNING"}}"#)
    );
    // A null level drops the target's runtime level.
    let reset = post_json(
        service.address,
        "/manage/logging/targets",
        r#"{"target": "example_service", "level": null}"#,
    );
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(json(&reset.body), json(r#"{"targets": {}}"#));
    let missing = post_json(
        service.address,
        "/manage/logging/targets",
        r#"{"target": "example_service"}"#,
    );
    assert_eq!(missing.status, 400, "{}", missing.body);
}

#[test]
fn unknown_routes_are_404_json_and_wrong_methods_405_with_allow() {
    let service = start("");
    let missing = get(service.address, "/manage/nothing");
    assert_eq!(missing.status, 404);
    assert_eq!(
        json(&missing.body),
        json(r#"{"error": "no route for GET /manage/nothing", "status": 404}"#)
    );

    for (method, path, allow) in [
        ("DELETE", "/manage/logging/level", "GET, POST"),
        ("POST", "/manage/version", "GET"),
        ("PUT", "/hello/ann", "GET"),
        ("POST", "/", "GET"),
    ] {
        let response = request(service.address, method, path, &[], Some(""));
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
        let error = json(&response.body);
        assert_eq!(error["status"], 405);
        assert!(error["error"].as_str().unwrap().contains(method));
    }
}

#[test]
fn health_reports_the_process_and_fails_with_a_check() {
    let service = start("[greeting]\ntemplate = \"hi {name}\"\n");
    let health = get(service.address, "/manage/health");
    assert_eq!(health.status, 200);
    let body = json(&health.body);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["pid"], service.pid());
    assert_eq!(body["level"], "INFO");
    assert_eq!(body["checks"]["greeting"]["ok"], true);

    // A template without a placeholder fails the example's check: 503.
    let before = service.log().len();
    std::fs::write(
        service.config_path(),
        "[greeting]\ntemplate = \"hi\"\n[server]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    service.wait_log_after(before, "greeting config changed");
    let health = get(service.address, "/manage/health");
    assert_eq!(health.status, 503, "{}", health.body);
    let body = json(&health.body);
    assert_eq!(body["status"], "failing");
    assert_eq!(body["checks"]["greeting"]["ok"], false);
    assert!(
        body["checks"]["greeting"]["error"]
            .as_str()
            .unwrap()
            .contains("{name}")
    );
    let hello = get(service.address, "/hello/ann");
    assert_eq!(json(&hello.body)["message"], "hi");
}

#[test]
fn request_ids_are_in_headers_and_in_every_line_of_the_request() {
    let service = start("");
    let response = request(
        service.address,
        "GET",
        "/hello/ann",
        &[("X-Request-Id", "test-id-42")],
        None,
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-request-id"), Some("test-id-42"));
    assert_eq!(json(&response.body)["message"], "hello, ann!");
    service.wait_log("request completed with 200");
    let lines: Vec<String> = service
        .log()
        .into_iter()
        .filter(|l| l.contains("[test-id-42 "))
        .collect();
    for needle in [
        "hit /hello/ann",
        "greeting ann",
        "request completed with 200",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle:?} not in {lines:?}"
        );
    }

    let fresh = get(service.address, "/manage/version");
    let id = fresh.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let errors = get(service.address, "/nope");
    assert!(
        errors.header("x-request-id").is_some(),
        "errors carry ids too"
    );
}

/// The docs page renders from this binary alone: headless Chromium (with
/// no network but the service's) shows the management operations.
#[test]
fn the_docs_page_renders_in_headless_chromium() {
    let service = start("");
    let index = get(service.address, "/manage/docs/");
    assert_eq!(index.status, 200);
    assert!(index.body.contains("swagger-ui-bundle.js"));
    for asset in [
        "/manage/docs/swagger-ui-bundle.js",
        "/manage/docs/swagger-ui.css",
    ] {
        let response = get(service.address, asset);
        assert_eq!(response.status, 200, "{asset}");
        assert!(
            response.body.len() > 10_000,
            "{asset} is {} bytes",
            response.body.len()
        );
    }
    let redirect = get(service.address, "/manage/docs");
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/manage/docs/"));

    let profile = tempfile::tempdir().unwrap();
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is installed (.ci/run installs Debian's `chromium`)");
    let mut command = std::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            // Anything but the service is unreachable: the page must not
            // need the internet.
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{}/manage/docs/", service.address))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().expect("run chromium");
    // A hung browser fails the test instead of hanging it.
    let output = output_within(child, std::time::Duration::from_secs(120));
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("opblock-tag") && dom.contains("management"),
        "no rendered operations; chromium said {}\n{dom}",
        String::from_utf8_lossy(&output.stderr)
    );
    for path in ["/manage/logging/level", "/manage/health", "/hello/{name}"] {
        assert!(dom.contains(path), "{path} not on the page");
    }
}
