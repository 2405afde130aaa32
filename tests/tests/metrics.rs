//! `/manage/metrics` over real HTTP to the example service: exact counts,
//! the text format checked by two parsers, and one scrape answering for
//! every worker process.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serve_common_tests::http_support::{PATIENCE, Service, get, request};

fn start(config: &str) -> Service {
    Service::start(env!("CARGO_BIN_EXE_example_service"), config)
}

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Reads the sample lines of the text format (label values quoted, with
/// `\\`, `\"` and `\n` escapes). Comments are `promtool`'s to check.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line}"));
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            loop {
                let (key_start, first) = chars.next().unwrap_or_else(|| panic!("{line}"));
                if first == '}' {
                    rest = &inner[key_start + 1..];
                    break;
                }
                let eq = inner[key_start..].find('=').unwrap() + key_start;
                let key = inner[key_start..eq].to_owned();
                while chars.next().is_some_and(|(i, _)| i < eq + 1) {}
                let mut value = String::new();
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        (true, 'n') => {
                            value.push('\n');
                            escaped = false;
                        }
                        (_, c) => {
                            value.push(c);
                            escaped = false;
                        }
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    other => panic!("{line}: {other:?}"),
                }
            }
        }
        let value = match rest.trim() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    fn of(service: &Service) -> Self {
        let response = get(service.address, "/manage/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = response.body;
        let samples = parse(&text);
        Self { text, samples }
    }

    fn matching<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == metric
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The value of the sample `metric` whose labels include `labels`
    /// (at most one such sample), or `None`.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self.matching(metric, labels).map(|s| s.value).collect();
        assert!(
            found.len() <= 1,
            "{metric} {labels:?} twice:\n{}",
            self.text
        );
        found.first().copied()
    }

    /// A histogram's buckets: (`le`, cumulative count), in order.
    fn buckets(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let name = format!("{metric}_bucket");
        self.matching(&name, labels)
            .map(|s| {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .expect("le")
                    .1
                    .as_str();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect()
    }

    fn requests(&self, route: &str, status: &str) -> f64 {
        self.value(
            "http_requests_total",
            &[("method", "GET"), ("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
    }

    /// Lines of the text (series) whose name starts with `prefix`.
    fn series(&self, prefix: &str) -> usize {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .count()
    }
}

/// `promtool check metrics` (Debian's `prometheus` package; `.ci/run`
/// installs it): the exposition is what Prometheus itself reads, with its
/// naming lints.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool, from Debian's `prometheus` package (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn requests_are_counted_by_route_template_and_status_and_timed() {
    let service = start("");
    for name in ["ann", "bob", "cy", "dee", "eve"] {
        assert_eq!(get(service.address, &format!("/hello/{name}")).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(service.address, "/greeting").status, 200);
    }
    let long = "x".repeat(101);
    for _ in 0..2 {
        assert_eq!(get(service.address, &format!("/hello/{long}")).status, 400);
    }
    let posted = request(service.address, "POST", "/hello/ann", &[], Some(""));
    assert_eq!(posted.status, 405);

    let metrics = Metrics::of(&service);
    promtool_accepts(&metrics.text);
    assert_eq!(
        metrics.requests("/hello/{name}", "200"),
        5.0,
        "{}",
        metrics.text
    );
    assert_eq!(metrics.requests("/hello/{name}", "400"), 2.0);
    assert_eq!(metrics.requests("/greeting", "200"), 3.0);
    assert_eq!(
        metrics.value(
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/hello/{name}"),
                ("status", "405")
            ]
        ),
        Some(1.0)
    );
    // No raw path anywhere.
    assert!(!metrics.text.contains("/hello/ann"), "{}", metrics.text);
    // The application's own counter, from the `metrics` facade.
    assert_eq!(metrics.value("greetings_total", &[]), Some(5.0));

    // The histogram agrees with the counters and is cumulative.
    let route = [("method", "GET"), ("route", "/hello/{name}")];
    let count = metrics
        .value("http_request_duration_seconds_count", &route)
        .expect("a count");
    assert_eq!(count, 7.0);
    let buckets = metrics.buckets("http_request_duration_seconds", &route);
    assert_eq!(buckets.len(), 12, "{}", metrics.text);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0)
    );
    assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, count));
    let sum = metrics
        .value("http_request_duration_seconds_sum", &route)
        .unwrap();
    assert!(sum > 0.0 && sum < 7.0 * 10.0, "{sum}");

    // serve-common's own metrics, and the process's.
    assert_eq!(
        metrics.value("serve_common_build_info", &[("version", "0.1.0")]),
        Some(1.0)
    );
    let pid = service.pid().to_string();
    let resident = metrics
        .value("process_resident_memory_bytes", &[("pid", &pid)])
        .expect("resident memory");
    assert!(resident > 1e6, "{resident}");
    assert!(metrics.value("process_open_fds", &[("pid", &pid)]).unwrap() > 3.0);
    assert!(metrics.value("process_cpu_seconds_total", &[]).is_some());
    assert!(
        metrics
            .value("serve_common_events_notified_total", &[])
            .is_some()
    );
    assert_eq!(
        metrics.value("serve_common_config_reloads_total", &[("result", "error")]),
        Some(0.0)
    );
    assert_eq!(
        metrics.value("serve_common_scrape_missing_workers", &[]),
        Some(0.0)
    );
}

#[test]
fn paths_no_route_matches_share_one_series() {
    let service = start("");
    let before = Metrics::of(&service).series("http_");
    let address = service.address;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..2_500 {
                    let path = format!("/no/such/{t}/{i}");
                    assert_eq!(get(address, &path).status, 404);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let metrics = Metrics::of(&service);
    assert_eq!(metrics.requests("<unmatched>", "404"), 10_000.0);
    // The unmatched series, its histogram, and the first scrape's route:
    // a fixed number, whatever the paths.
    let after = metrics.series("http_");
    assert!(
        after <= before + 2 * 16,
        "{before} -> {after}:\n{}",
        metrics.text
    );
    assert!(!metrics.text.contains("/no/such"), "{}", metrics.text);
}

#[test]
fn excluded_routes_are_not_recorded_and_a_bad_section_is_refused() {
    let service = start("[metrics]\nexclude = [\"/manage/*\"]\nbuckets = [0.5, 1.0]\n");
    get(service.address, "/hello/ann");
    get(service.address, "/manage/health");
    let metrics = Metrics::of(&service);
    assert_eq!(metrics.requests("/hello/{name}", "200"), 1.0);
    assert!(
        !metrics.text.contains("route=\"/manage/"),
        "{}",
        metrics.text
    );
    // The configured buckets: two bounds and +Inf.
    assert_eq!(metrics.series("http_request_duration_seconds_bucket"), 3);

    // A bad edit is refused (the old section stays), like any typed section.
    let config = std::fs::read_to_string(service.config_path()).unwrap();
    let from = service.log().len();
    std::fs::write(
        service.config_path(),
        config.replace("buckets = [0.5, 1.0]", "buckets = [1.0, 0.5]"),
    )
    .unwrap();
    service.wait_log_after(from, "strictly increasing");
}

#[test]
fn a_bad_metrics_section_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nbind = \"127.0.0.1:0\"\n[metrics]\nbucket = [1.0]\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_example_service"))
        .current_dir(dir.path())
        .env("SERVE_COMMON_CONFIG", dir.path().join("config.toml"))
        .env_remove("SERVCOM_IPC_ADDR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = serve_common_tests::http_support::output_within(child, PATIENCE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bucket") && stderr.contains("metrics"),
        "{stderr}"
    );
}

/// Scrapes until each of `pids` has answered one (the listener is shared:
/// the kernel picks the worker), checking `check` on every scrape.
fn scrape_every_worker(service: &Service, pids: &BTreeSet<u32>, check: impl Fn(&Metrics)) {
    let deadline = Instant::now() + PATIENCE;
    let mut served = BTreeSet::new();
    while served != *pids {
        assert!(Instant::now() < deadline, "scrapes reached only {served:?}");
        let response = get(service.address, "/manage/health");
        let pid: u32 = serde_json::from_str::<serde_json::Value>(&response.body).unwrap()["pid"]
            .as_u64()
            .unwrap() as u32;
        let metrics = Metrics::of(service);
        check(&metrics);
        served.insert(pid);
    }
}

/// `count` greetings (`/hello/<prefix><i>`), each answered 200.
fn greet(service: &Service, prefix: &str, count: usize) {
    for i in 0..count {
        assert_eq!(
            get(service.address, &format!("/hello/{prefix}{i}")).status,
            200
        );
    }
}

/// Both counts of the greetings (the service's and the application's)
/// are `expected` in this scrape.
fn assert_greetings(metrics: &Metrics, expected: f64) {
    assert_eq!(
        metrics.requests("/hello/{name}", "200"),
        expected,
        "{}",
        metrics.text
    );
    assert_eq!(metrics.value("greetings_total", &[]), Some(expected));
}

/// The example with 2 workers, the management routes not recorded (so
/// scrapes do not count themselves): the service and the worker pids.
fn two_workers() -> (Service, BTreeSet<u32>) {
    let service = start("[server]\nprocesses = 2\n[metrics]\nexclude = [\"/manage/*\"]\n");
    let pids = service.worker_pids(2);
    (service, pids)
}

#[test]
fn with_two_workers_a_scrape_of_either_answers_for_the_service() {
    let (service, pids) = two_workers();
    greet(&service, "n", 40);
    let supervisor = service.pid().to_string();
    scrape_every_worker(&service, &pids, |metrics| {
        assert_greetings(metrics, 40.0);
        assert_eq!(
            metrics.value("serve_common_scrape_missing_workers", &[]),
            Some(0.0)
        );
        // Gauges per process: both workers and the supervisor.
        for pid in pids.iter().map(u32::to_string).chain([supervisor.clone()]) {
            assert!(
                metrics
                    .value("process_open_fds", &[("pid", &pid)])
                    .is_some(),
                "no gauge of {pid}:\n{}",
                metrics.text
            );
        }
        promtool_accepts(&metrics.text);
    });

    // A stopped worker does not answer: the scrape says so after the
    // bounded wait, and its requests still count.
    let stopped = *pids.first().unwrap();
    let stopped_pid = Pid::from_raw(stopped as i32);
    kill(stopped_pid, Signal::SIGSTOP).unwrap();
    serve_common_tests::wait_stopped(stopped);
    let started = Instant::now();
    let metrics = Metrics::of(&service);
    let waited = started.elapsed();
    kill(stopped_pid, Signal::SIGCONT).unwrap();
    assert_eq!(
        metrics.value("serve_common_scrape_missing_workers", &[]),
        Some(1.0)
    );
    assert_eq!(
        metrics.requests("/hello/{name}", "200"),
        40.0,
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .value("process_open_fds", &[("pid", &stopped.to_string())])
            .is_none(),
        "a silent worker's gauges are left out"
    );
    // The bounded wait (250 ms by default), not a hang.
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

#[test]
fn a_killed_workers_requests_still_count_so_no_counter_goes_down() {
    let (service, pids) = two_workers();
    greet(&service, "n", 30);
    // Both workers have served and answered a scrape (so the supervisor
    // holds their values).
    scrape_every_worker(&service, &pids, |metrics| {
        assert_eq!(metrics.requests("/hello/{name}", "200"), 30.0);
    });
    let victim = *pids.last().unwrap();
    let from = service.log().len();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let restarted = service.wait_log_after(from, "started (pid ");
    let new_pid: u32 = restarted
        .split("started (pid ")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("{restarted}"));
    service.wait_log(&format!(":{} (pid {new_pid})", service.address.port()));
    greet(&service, "m", 10);
    let survivors: BTreeSet<u32> = pids
        .iter()
        .copied()
        .filter(|pid| *pid != victim)
        .chain([new_pid])
        .collect();
    scrape_every_worker(&service, &survivors, |metrics| {
        assert_greetings(metrics, 40.0);
        assert!(
            metrics
                .value("process_open_fds", &[("pid", &victim.to_string())])
                .is_none(),
            "the dead worker's gauges are gone"
        );
    });
}
