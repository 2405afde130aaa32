//! The OpenAPI document is what the service does: for every operation of
//! the example service and of the probe service, requests built from the
//! document (a valid one, and invalid ones: a body of the wrong shape,
//! not JSON, of another content type, over the limit; a path segment that
//! does not parse), each answer checked against the document: its status
//! is documented, its content type is the documented one, its body
//! validates against the documented schema (with a JSON Schema validator).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use serve_common_tests::http_support::{Response, Service, request};

const LIMIT: usize = 4096;

fn start(binary: &str) -> Service {
    Service::start(
        binary,
        &format!("[server]\nmax_body_bytes = {LIMIT}\nrequest_timeout = 30\n"),
    )
}

fn document(service: &Service) -> Value {
    let spec = request(service.address, "GET", "/manage/spec", &[], None);
    assert_eq!(spec.status, 200);
    serde_json::from_str(&spec.body).expect("the document is JSON")
}

/// Follows a `$ref` to `#/components/schemas/..`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(
                spec,
                spec.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} resolves")),
            )
        }
        None => schema,
    }
}

/// A value the schema accepts.
fn valid_value(spec: &Value, schema: &Value) -> Value {
    let schema = resolve(spec, schema);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values[0].clone();
    }
    for combinator in ["allOf", "oneOf", "anyOf"] {
        if let Some(first) = schema.get(combinator).and_then(|all| all.get(0)) {
            return valid_value(spec, first);
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => json!("x"),
        Some("integer") => json!(
            schema
                .get("minimum")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(1)
        ),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        _ => {
            let mut object = serde_json::Map::new();
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let property = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                object.insert(name.to_owned(), valid_value(spec, property));
            }
            Value::Object(object)
        }
    }
}

/// OpenAPI 3.0's schema dialect as JSON Schema: `nullable` becomes a
/// `null` type.
fn as_json_schema(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.remove("nullable") == Some(Value::Bool(true)) {
                match object.get("type").cloned() {
                    Some(Value::String(kind)) => {
                        object.insert("type".to_owned(), json!([kind, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(object));
                        object.insert("anyOf".to_owned(), json!([inner, { "type": "null" }]));
                    }
                }
            }
            object.values_mut().for_each(as_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(as_json_schema),
        _ => {}
    }
}

/// Checks `response` against the operation's documented responses.
fn check(spec: &Value, what: &str, operation: &Value, response: &Response) {
    let status = response.status.to_string();
    let documented = &operation["responses"];
    let Some(answer) = documented.get(&status) else {
        let known: Vec<&String> = documented.as_object().unwrap().keys().collect();
        panic!(
            "{what}: answered {status}, documented {known:?}: {}",
            response.body
        );
    };
    let Some(content) = answer.get("content").and_then(Value::as_object) else {
        return;
    };
    let sent = response.header("content-type").unwrap_or_default();
    let Some(media) = content.get(sent) else {
        let known: Vec<&String> = content.keys().collect();
        panic!("{what}: {status} sent as {sent:?}, documented as {known:?}");
    };
    if !sent.starts_with("application/json") {
        return;
    }
    let body: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{what}: {status} is not JSON ({e}): {}", response.body));
    let mut schema = json!({
        "allOf": [media["schema"].clone()],
        "components": spec["components"].clone(),
    });
    as_json_schema(&mut schema);
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{what}: the documented schema compiles: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the {status} body does not match its schema: {errors:?}\n{}",
        response.body
    );
}

/// The path with each parameter replaced by a valid value, or by `bad`
/// for the typed ones when given.
fn fill(spec: &Value, path: &str, operation: &Value, bad: Option<&str>) -> (String, bool) {
    let mut filled = path.to_owned();
    let mut typed = false;
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap();
        let schema = resolve(spec, &parameter["schema"]);
        // As the document has it: a plain string always parses.
        let is_typed = schema["type"] != "string"
            || schema.get("format").is_some()
            || schema.get("enum").is_some();
        typed |= is_typed;
        let value = match (bad, is_typed) {
            (Some(bad), true) => bad.to_owned(),
            _ => match valid_value(spec, schema) {
                Value::String(text) => text,
                other => other.to_string(),
            },
        };
        filled = filled.replace(&format!("{{{name}}}"), &value);
    }
    (filled, typed)
}

fn walk(binary: &str) -> BTreeSet<String> {
    let service = start(binary);
    let spec = document(&service);
    let mut seen = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            seen.insert(id.to_owned());
            // With server.request_timeout, any operation can give a 503.
            assert!(
                operation["responses"].get("503").is_some(),
                "{method} {path}: the request timeout's 503 is documented"
            );
            for (code, answer) in operation["responses"].as_object().unwrap() {
                assert!(
                    !answer["description"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty(),
                    "{method} {path}: response {code} has a description"
                );
            }
            let method = method.to_uppercase();
            let body_schema = operation.pointer("/requestBody/content/application~1json/schema");
            let (url, typed) = fill(&spec, path, operation, None);
            let what = format!("{method} {url} ({id})");

            // A valid request: a documented success.
            let body = body_schema.map(|schema| valid_value(&spec, schema).to_string());
            let json_header = [("Content-Type", "application/json")];
            let headers: &[(&str, &str)] = if body.is_some() { &json_header } else { &[] };
            let response = request(service.address, &method, &url, headers, body.as_deref());
            assert!(
                response.status < 400,
                "{what}: a valid request answered {}: {}",
                response.status,
                response.body
            );
            check(&spec, &what, operation, &response);

            if typed {
                let (bad_url, _) = fill(&spec, path, operation, Some("not-a-number"));
                let response =
                    request(service.address, &method, &bad_url, headers, body.as_deref());
                assert_eq!(
                    response.status, 404,
                    "{what}: a segment that does not parse"
                );
                check(&spec, &format!("{what}, bad segment"), operation, &response);
            }
            if body_schema.is_some() {
                let wrong_shape = r#"[1, "two"]"#;
                let not_json = "{not json";
                let too_big = format!("\"{}\"", "a".repeat(LIMIT + 1));
                for (case, headers, body, expected) in [
                    ("wrong shape", &json_header[..], wrong_shape, 400),
                    ("not JSON", &json_header[..], not_json, 400),
                    (
                        "text/plain",
                        &[("Content-Type", "text/plain")][..],
                        "x",
                        415,
                    ),
                    ("over the limit", &json_header[..], too_big.as_str(), 413),
                ] {
                    let response = request(service.address, &method, &url, headers, Some(body));
                    assert_eq!(
                        response.status, expected,
                        "{what}, {case}: {}",
                        response.body
                    );
                    check(&spec, &format!("{what}, {case}"), operation, &response);
                }
            }
        }
    }
    seen
}

#[test]
fn every_operation_of_the_example_answers_as_documented() {
    let ids = walk(env!("CARGO_BIN_EXE_example_service"));
    // Operation ids are the handlers' names.
    for id in ["hello", "template", "manage_health", "manage_post_level"] {
        assert!(ids.contains(id), "{id} in {ids:?}");
    }
}

#[test]
fn every_operation_of_the_probe_service_answers_as_documented() {
    let ids = walk(env!("CARGO_BIN_EXE_probe_service"));
    for id in ["slow", "echo", "text", "bytes"] {
        assert!(ids.contains(id), "{id} in {ids:?}");
    }
}
