//! W3C trace context over real HTTP: a valid `traceparent` continues the
//! trace, a malformed one starts a new trace and is counted, the trace
//! id is in the request's log lines (text and JSON), and the outgoing
//! headers continue the trace from this request's span.

use serde_json::Value;
use serve_common_tests::http_support::{Response, Service, get, request};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn start(config: &str) -> Service {
    Service::start(env!("CARGO_BIN_EXE_probe_service"), config)
}

fn traced(service: &Service, headers: &[(&str, &str)]) -> Value {
    let response: Response = request(service.address, "GET", "/trace", headers, None);
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn a_valid_traceparent_continues_the_trace_and_reaches_the_log_lines() {
    let service = start("[logging]\nfile = \"svc.log\"\njson = true\n");
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let body = traced(
        &service,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    );
    assert_eq!(body["trace_id"], TRACE);
    assert_eq!(body["parent_span_id"], PARENT);
    let span = body["span_id"].as_str().unwrap();
    assert!(is_hex(span, 16) && span != PARENT, "{body}");
    // A call from here continues the trace, this request's span its parent.
    let outgoing = body["outgoing"].as_array().unwrap();
    assert_eq!(outgoing[0][0], "traceparent");
    assert_eq!(outgoing[0][1], format!("00-{TRACE}-{span}-01"));
    assert_eq!(outgoing[1][0], "tracestate");
    assert_eq!(outgoing[1][1], "congo=t61rcWkgMzE");

    // Text lines (standard error): beside the request id, the trace id's
    // first 8 hex digits.
    let request_id = body["request_id"].as_str().unwrap();
    let line = service.wait_log("handling the trace request");
    assert!(
        line.contains(&format!("[{request_id} {}] handling", &TRACE[..8])),
        "{line}"
    );
    let hit = service.wait_log("hit /trace");
    assert!(
        hit.contains(&format!(" {}] hit /trace", &TRACE[..8])),
        "{hit}"
    );

    // JSON lines (the file): the whole ids, as the request span's fields.
    let file = service.path().join("logs").join("svc.log");
    let deadline = std::time::Instant::now() + serve_common_tests::http_support::PATIENCE;
    let json = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("handling the trace request"))
        {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON line in {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let text = json.to_string();
    assert!(
        text.contains(&format!("\"trace_id\":\"{TRACE}\"")),
        "{text}"
    );
    assert!(text.contains(&format!("\"span_id\":\"{span}\"")), "{text}");
    assert!(
        text.contains(&format!("\"request_id\":\"{request_id}\"")),
        "{text}"
    );
}

#[test]
fn malformed_traceparents_start_new_traces_and_are_counted() {
    let service = start("");
    let bad = [
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        format!("00-{TRACE}-0000000000000000-01"),
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("00-{TRACE}-{PARENT}"),
    ];
    let mut traces = std::collections::BTreeSet::new();
    for header in &bad {
        let body = traced(&service, &[("traceparent", header), ("tracestate", "a=b")]);
        let trace = body["trace_id"].as_str().unwrap().to_owned();
        assert!(is_hex(&trace, 32) && trace != TRACE, "{header}: {body}");
        assert!(body["parent_span_id"].is_null(), "{body}");
        // No tracestate without a valid parent.
        assert_eq!(body["outgoing"].as_array().unwrap().len(), 1, "{body}");
        traces.insert(trace);
    }
    assert_eq!(traces.len(), bad.len(), "each a new trace");
    // Two traceparents, each valid, are not one trace: malformed too.
    let valid = format!("00-{TRACE}-{PARENT}-01");
    let body = traced(
        &service,
        &[("traceparent", &valid), ("traceparent", &valid)],
    );
    assert_ne!(body["trace_id"], TRACE, "{body}");
    // Several tracestates are one list; of the flags only `sampled` goes on.
    let flagged = format!("00-{TRACE}-{PARENT}-03");
    let body = traced(
        &service,
        &[
            ("traceparent", &flagged),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ],
    );
    let outgoing = body["outgoing"].as_array().unwrap();
    assert!(outgoing[0][1].as_str().unwrap().ends_with("-01"), "{body}");
    assert_eq!(outgoing[1][1], "a=1,b=2");
    // Without the header: a new trace too, not counted.
    let body = traced(&service, &[]);
    assert!(body["parent_span_id"].is_null());
    let metrics = get(service.address, "/manage/metrics").body;
    let count = metrics
        .lines()
        .find(|l| l.starts_with("serve_common_traceparent_malformed_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(count, "serve_common_traceparent_malformed_total 5");
}

/// The OTLP export, decoded by a receiver of our own (feature `otel`:
/// `cargo test -p serve-common-tests --features otel --test tracing`).
#[cfg(feature = "otel")]
mod otlp {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use nix::sys::signal::Signal;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    use super::*;

    /// An OTLP/HTTP receiver on a free port: every request's decoded body.
    fn receiver() -> (String, mpsc::Receiver<(String, ExportTraceServiceRequest)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, received) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let sender = sender.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut start = String::new();
                        if reader.read_line(&mut start).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            reader.read_line(&mut line).unwrap();
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let request = ExportTraceServiceRequest::decode(&body[..])
                            .expect("a protobuf ExportTraceServiceRequest");
                        let path = start
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or_default()
                            .to_owned();
                        let _ = sender.send((path, request));
                        writer
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                            )
                            .unwrap();
                    }
                });
            }
        });
        (url, received)
    }

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(attributes: &[KeyValue], key: &str) -> String {
        match attribute(attributes, key) {
            Some(Any::StringValue(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn request_spans_are_exported_in_the_callers_trace_and_flushed_at_shutdown() {
        let (url, received) = receiver();
        let mut service = start(&format!(
            "[telemetry]\nservice_name = \"probe\"\n[telemetry.otlp]\nendpoint = \"{url}\"\n"
        ));
        let traceparent = format!("00-{TRACE}-{PARENT}-01");
        let continued = traced(&service, &[("traceparent", &traceparent)]);
        let fresh = traced(&service, &[]);
        // The batch leaves at the latest when the service stops.
        service.signal(Signal::SIGTERM);
        assert!(service.wait_exit().success());
        let mut spans: Vec<(Vec<KeyValue>, Span)> = Vec::new();
        while let Ok((path, request)) = received.recv_timeout(std::time::Duration::from_secs(10)) {
            assert_eq!(path, "/v1/traces");
            for resource in request.resource_spans {
                let attributes = resource.resource.unwrap().attributes;
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push((attributes.clone(), span));
                    }
                }
            }
            if spans.iter().filter(|(_, s)| s.name == "GET /trace").count() == 2 {
                break;
            }
        }
        let traces: Vec<&(Vec<KeyValue>, Span)> = spans
            .iter()
            .filter(|(_, s)| s.name == "GET /trace")
            .collect();
        assert_eq!(traces.len(), 2, "{spans:?}");
        for (resource, _) in &traces {
            assert_eq!(text(resource, "service.name"), "probe");
            assert_eq!(text(resource, "service.version"), env!("CARGO_PKG_VERSION"));
        }
        let by_trace = |trace: &str| {
            traces
                .iter()
                .find(|(_, s)| hex(&s.trace_id) == trace)
                .map(|(_, s)| s)
                .unwrap_or_else(|| panic!("no span of trace {trace}: {traces:?}"))
        };
        // The caller's trace, its span the parent, the ids handed out.
        let span = by_trace(TRACE);
        assert_eq!(hex(&span.parent_span_id), PARENT);
        assert_eq!(hex(&span.span_id), continued["span_id"].as_str().unwrap());
        assert_eq!(span.kind, 2, "a server span");
        assert_eq!(text(&span.attributes, "http.request.method"), "GET");
        assert_eq!(text(&span.attributes, "http.route"), "/trace");
        assert_eq!(
            attribute(&span.attributes, "http.response.status_code"),
            Some(&Any::IntValue(200))
        );
        assert_eq!(
            text(&span.attributes, "request_id"),
            continued["request_id"].as_str().unwrap()
        );
        // A request without traceparent: a root span of a new trace.
        let root = by_trace(fresh["trace_id"].as_str().unwrap());
        assert!(root.parent_span_id.is_empty());
        assert_eq!(hex(&root.span_id), fresh["span_id"].as_str().unwrap());
    }

    #[test]
    fn an_unreachable_collector_is_logged_once_and_requests_go_on() {
        // A port nothing listens on.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut service = start(&format!(
            "[telemetry.otlp]\nendpoint = \"{url}\"\ntimeout_ms = 500\n"
        ));
        for _ in 0..5 {
            assert_eq!(get(service.address, "/slow/0").status, 200);
        }
        service.signal(Signal::SIGTERM);
        assert!(service.wait_exit().success());
        let failures = service
            .log()
            .iter()
            .filter(|l| l.contains("OpenTelemetry export failed"))
            .count();
        assert_eq!(failures, 1, "{:#?}", service.log());
    }
}
