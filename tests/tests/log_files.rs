//! The configured log file of a service of several processes: rotated by
//! size without losing, splitting or repeating a line; rotated files never
//! written again; a file that cannot be written reported and recovered.
//! Real processes (`log_service`: a supervisor and its workers, the IPC
//! server), real files, real HTTP.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serve_common_tests::http_support::{Service, get};

const MAX_BYTES: u64 = 20_000;

fn config(processes: usize, keep: usize) -> String {
    format!(
        "[server]\nprocesses = {processes}\nworkers = 2\n[logging]\nfile = \"svc.log\"\nmax_bytes = {MAX_BYTES}\nkeep = {keep}\n"
    )
}

fn start(processes: usize, keep: usize) -> Service {
    Service::start(env!("CARGO_BIN_EXE_log_service"), &config(processes, keep))
}

/// `GET /r/{n}` for every `n` of `range`, from 8 threads at once.
fn hit(service: &Service, range: std::ops::RangeInclusive<u64>) {
    let address = service.address;
    let all: Vec<u64> = range.collect();
    let threads: Vec<_> = all
        .chunks(all.len().div_ceil(8).max(1))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for n in chunk {
                    let response = get(address, &format!("/r/{n}"));
                    assert_eq!(response.status, 200, "{}", response.body);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// The log files, newest last: `svc.log.N`, ..., `svc.log.1`, `svc.log`.
fn files(logs: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            if name == "svc.log" {
                return Some((0, path));
            }
            let n = name.strip_prefix("svc.log.")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    numbered.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    numbered.into_iter().map(|(_, path)| path).collect()
}

/// Stops the service (SIGTERM: every process flushes its file).
fn stop(mut service: Service) -> Service {
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit().success());
    service
}

/// Every line of every file, well-formed (one whole line of the format,
/// never two run together), and no file over `MAX_BYTES` but by one line.
fn read_lines(logs: &Path) -> Vec<String> {
    // Time, level, pid, the request id inside a request, the message.
    let line_format = regex::Regex::new(
        r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[[A-Z]+ *\] \[\d+\] (\[[0-9a-f-]{36} [0-9a-f]{8}\] )?[^\[]",
    )
    .unwrap();
    let timestamp = regex::Regex::new(r"\[\d{4}-\d\d-\d\d \d\d:").unwrap();
    let mut all = Vec::new();
    for path in files(logs) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{path:?} ends mid-line"
        );
        let longest = text.lines().map(|l| l.len() as u64 + 1).max().unwrap_or(0);
        assert!(
            text.len() as u64 <= MAX_BYTES.max(longest),
            "{path:?}: {} bytes, more than max_bytes {MAX_BYTES} and its longest line",
            text.len()
        );
        for line in text.lines() {
            assert!(
                line_format.is_match(line),
                "malformed line in {path:?}: {line:?}"
            );
            assert_eq!(
                timestamp.find_iter(line).count(),
                1,
                "two lines run together in {path:?}: {line:?}"
            );
            all.push(line.to_owned());
        }
    }
    all
}

/// How many times each request's own line appears.
fn request_counts(lines: &[String]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        if let Some(rest) = line.split(" request line n=").nth(1) {
            *counts.entry(rest.trim().parse().unwrap()).or_default() += 1;
        }
    }
    counts
}

fn no_panic(service: &Service) {
    let log = service.log().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn two_workers_and_the_supervisor_share_one_file_every_line_once_across_rotations() {
    let service = start(2, 1000);
    let supervisor = service.pid();
    let total = 5_000;
    hit(&service, 1..=total);
    let service = stop(service);
    no_panic(&service);

    let logs = service.path().join("logs");
    let lines = read_lines(&logs);
    let counts = request_counts(&lines);
    let missing: Vec<u64> = (1..=total).filter(|n| !counts.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} request lines missing: {missing:?}",
        missing.len()
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(repeated.is_empty(), "request lines repeated: {repeated:?}");

    // Rotated files are numbered without a gap, the file at the path is the
    // newest, and several rotations happened.
    let files = files(&logs);
    assert!(files.len() > 5, "{files:?}");
    for (i, path) in files.iter().rev().enumerate().skip(1) {
        assert_eq!(path, &logs.join(format!("svc.log.{i}")));
    }

    // The supervisor, both workers (in the serve closure too) and the IPC
    // server wrote into the same file, in the same format.
    let from = |pid: u32, text: &str| {
        lines
            .iter()
            .any(|l| l.contains(&format!("] [{pid}] ")) && l.contains(text))
    };
    assert!(from(supervisor, "inside main, before serve"), "supervisor");
    assert!(from(supervisor, "listening on http://"), "supervisor");
    let workers: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.contains("inside the serve closure"))
        .filter_map(|l| l.split("] [").nth(2)?.split(']').next())
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the serve closure of both workers: {workers:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("IPC server listening")),
        "the IPC server's lines are in the file"
    );
    // Libraries' start-up chatter is DEBUG.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("starting in Actix runtime")),
        "actix-server's INFO chatter"
    );
}

#[test]
fn with_keep_2_the_newest_lines_stay_and_rotated_files_are_never_written_again() {
    let service = start(2, 2);
    hit(&service, 1..=3_000);
    let logs = service.path().join("logs");
    // Each rotated file, held open (so its inode stays its own), with its
    // size: none may grow, whatever name it has by then, or none.
    let rotated: Vec<(PathBuf, std::fs::File, u64)> = files(&logs)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e != "log"))
        .map(|p| {
            let file = std::fs::File::open(&p).unwrap();
            let size = file.metadata().unwrap().len();
            (p, file, size)
        })
        .collect();
    assert_eq!(rotated.len(), 2);
    // The newest: one at a time, after the rest.
    for n in 3_001..=3_100 {
        assert_eq!(get(service.address, &format!("/r/{n}")).status, 200);
    }
    let service = stop(service);
    no_panic(&service);

    for (path, file, size) in rotated {
        let now = file.metadata().unwrap().len();
        assert_eq!(now, size, "{path:?} was written after its rotation");
    }
    assert_eq!(files(&logs).len(), 3, "svc.log and keep = 2 rotated files");
    let counts = request_counts(&read_lines(&logs));
    for n in 3_001..=3_100 {
        assert_eq!(counts.get(&n), Some(&1), "newest request {n}");
    }
    assert!(!counts.contains_key(&1), "the oldest were rotated away");
}

/// The service without the capabilities that let root write where
/// permissions say no (setpriv, from util-linux), so that a read-only
/// directory is read-only to it too.
fn start_without_dac_override(config: &str) -> Service {
    Service::start_with("setpriv", config, |command| {
        command.args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            env!("CARGO_BIN_EXE_log_service"),
        ]);
    })
}

fn health(service: &Service) -> (u16, serde_json::Value) {
    let response = get(service.address, "/manage/health");
    (
        response.status,
        serde_json::from_str(&response.body).unwrap(),
    )
}

#[test]
fn a_read_only_log_directory_is_reported_and_file_logging_resumes_when_it_is_writable() {
    let service = start_without_dac_override(&config(1, 1000));
    let logs = service.path().join("logs");
    hit(&service, 1..=100);
    assert_eq!(health(&service).0, 200);

    // Read-only, and the current file gone: it cannot be made again.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o500)).unwrap();
    std::fs::remove_file(logs.join("svc.log")).unwrap();
    let from = service.log().len();
    hit(&service, 101..=200);
    let error = service.wait_log_after(from, "[ERROR   ]");
    assert!(error.contains("cannot write log file"), "{error}");
    let (status, body) = health(&service);
    assert_eq!(status, 503, "{body}");
    let check = &body["checks"]["logging"];
    assert_eq!(check["ok"], false, "{body}");
    assert!(
        check["error"].as_str().unwrap().contains("svc.log"),
        "{body}"
    );
    // Reported once, not per line.
    hit(&service, 201..=300);
    let errors: Vec<String> = service
        .log()
        .into_iter()
        .filter(|l| l.contains("[ERROR   ]") && l.contains("cannot write log file"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");

    // Writable again: the waiting lines, then the new ones, reach the file.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
    // (It is retried with a back-off, at the next line after it.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = "writable again; 0 lines could not be written";
    let mut n = 300;
    while !service.log()[from..].iter().any(|l| l.contains(recovered)) {
        assert!(Instant::now() < deadline, "logging never recovered");
        n += 1;
        assert_eq!(get(service.address, &format!("/r/{n}")).status, 200);
    }
    assert_eq!(health(&service).0, 200);
    let service = stop(service);
    no_panic(&service);
    let counts = request_counts(&read_lines(&logs));
    let missing: Vec<u64> = (101..=n).filter(|n| !counts.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
}

#[test]
fn lines_logged_before_the_outputs_exist_reach_them() {
    // No config file: its warning comes before the config says where logs
    // go (the environment does: a file, and a free port).
    let service = Service::start_with(env!("CARGO_BIN_EXE_log_service"), "", |command| {
        command
            .env("SERVE_COMMON_CONFIG", "missing.toml")
            .env("SERVE_COMMON__SERVER__BIND", "127.0.0.1:0")
            .env("SERVE_COMMON__LOGGING__FILE", "svc.log");
    });
    let service = stop(service);
    let logs = service.path().join("logs");
    let lines = read_lines(&logs);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[WARNING ]") && l.contains("config file not found")),
        "{lines:#?}"
    );
    service.wait_log("config file not found");
}
