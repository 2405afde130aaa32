//! `bash bench/logging.sh`: `#[time_and_log]` off and on (criterion),
//! lines/s to the file output from 2 threads, and lines/s from 3 processes
//! into the one configured file with rotation on, each against its
//! baseline in the same run (the processes: alternating with 3 processes
//! each writing its own file, no coordination, `LOG_BENCH_ROUNDS` rounds,
//! medians).

mod common;

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use serve_common::config::{self, Config};
use serve_common::default::logging::{self, FileOutput};

#[inline(never)]
fn bare() {
    black_box(());
}

#[inline(never)]
#[serve_common::time_and_log("empty fn")]
fn timed() {
    black_box(());
}

fn set_level(level: &str) {
    config::config().set("logging.level", level).unwrap();
    assert!(serve_common::event::bus().flush(Duration::from_secs(10)));
    assert_eq!(logging::level(), level);
}

const LINES_PER_THREAD: usize = 200_000;

fn log_from_two_threads(log: fn(usize, usize)) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| std::thread::spawn(move || (0..LINES_PER_THREAD).for_each(|i| log(t, i))))
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    start.elapsed()
}

/// Lines each process of the multi-process measure writes.
const MULTI_LINES: usize = 200_000;
const MULTI_PROCESSES: usize = 3;
const CHILD_ENV: &str = "SERVE_COMMON_LOG_BENCH_CHILD";

/// The global config: no file, no environment, level INFO.
fn init_config() {
    config::init(
        Config::builder()
            .no_file()
            .no_env()
            .default_value("logging.level", "INFO"),
    )
    .unwrap();
}

/// A process of the multi-process measure: `ours` (the configured file,
/// shared, rotated at 1 MiB) or `baseline` (a file of its own, appended
/// through the same non-blocking writer, never rotated), then exits.
fn child(role: &str, dir: &std::path::Path) {
    init_config();
    let mut guard = None;
    if role == "ours" {
        logging::add_file(FileOutput {
            dir: Some(dir.to_owned()),
            max_bytes: 1 << 20,
            keep: 10_000,
            ..FileOutput::new("multi.log")
        })
        .unwrap();
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("own-{}.log", std::process::id())))
            .unwrap();
        let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(file);
        guard = Some(worker);
        logging::add_output_writer(writer, false).unwrap();
    }
    for i in 0..MULTI_LINES {
        tracing::info!(i, "multi line");
    }
    logging::flush();
    drop(guard);
}

/// One run of `role`: 3 processes at once; their wall time and the lines
/// found in the directory afterwards.
fn multi_run(role: &str) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let children: Vec<_> = (0..MULTI_PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .env(CHILD_ENV, role)
                .arg(dir.path())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let elapsed = start.elapsed();
    let mut found = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        found += text.lines().filter(|l| l.contains("multi line")).count();
    }
    (elapsed, found)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn multi_process(rounds: usize) {
    let total = MULTI_LINES * MULTI_PROCESSES;
    let (mut ours, mut baseline, mut lost) = (Vec::new(), Vec::new(), 0);
    println!("# {MULTI_PROCESSES} processes x {MULTI_LINES} lines, {rounds} rounds, alternating");
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            ["ours", "baseline"]
        } else {
            ["baseline", "ours"]
        };
        for role in order {
            let (elapsed, found) = multi_run(role);
            let rate = total as f64 / elapsed.as_secs_f64();
            println!("# round {round} {role}: {rate:.0} lines/s, {found} of {total} lines found");
            if role == "ours" {
                ours.push(rate);
                lost += total - found;
            } else {
                baseline.push(rate);
            }
        }
    }
    common::line("log_file_multi_lines_per_s", median(ours), median(baseline));
    println!("log_file_multi_lost: {lost} baseline: - ratio: -");
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        let dir = std::env::args().nth(1).expect("the directory");
        return child(&role, std::path::Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    init_config();
    let logs = dir.path().join("logs");
    logging::add_file(FileOutput {
        dir: Some(logs.clone()),
        max_bytes: 1 << 30,
        ..FileOutput::new("bench.log")
    })
    .unwrap();

    let out = dir.path().join("criterion");
    let mut criterion = common::criterion(&out);
    set_level("INFO");
    criterion.bench_function("bare", |b| b.iter(bare));
    criterion.bench_function("timed_off", |b| b.iter(timed));
    set_level("DEBUG");
    criterion.bench_function("timed_on", |b| b.iter(timed));
    criterion.bench_function("debug_macro", |b| {
        b.iter(|| tracing::debug!("{}: {} ns", black_box("empty fn"), black_box(1506_u128)))
    });
    set_level("INFO");
    criterion.final_summary();

    // Baseline: a plain fmt subscriber writing to a file, on both threads.
    let plain_file =
        std::sync::Mutex::new(std::fs::File::create(dir.path().join("plain.log")).unwrap());
    let plain = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(std::sync::Arc::new(plain_file).make_writer_fn())
            .finish(),
    );
    let plain_dispatch = plain.clone();
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let dispatch = plain_dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for i in 0..LINES_PER_THREAD {
                        tracing::info!(thread = t, i, "file throughput line");
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let baseline = start.elapsed();

    // Ours: until every line is in the file.
    let start = Instant::now();
    let _ = log_from_two_threads(|t, i| tracing::info!(thread = t, i, "file throughput line"));
    logging::flush();
    let ours = start.elapsed();
    let written = std::fs::read_to_string(logs.join("bench.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("file throughput line"))
        .count();
    let total = 2 * LINES_PER_THREAD;

    let median = |id| common::median_ns(&out, id);
    let (bare_ns, off_ns) = (median("bare"), median("timed_off"));
    common::line(
        "time_and_log_off_added_ns",
        (off_ns - bare_ns).max(0.0),
        bare_ns,
    );
    common::line(
        "time_and_log_on_ns",
        median("timed_on"),
        median("debug_macro"),
    );
    common::line(
        "log_file_lines_per_s",
        total as f64 / ours.as_secs_f64(),
        total as f64 / baseline.as_secs_f64(),
    );
    println!("log_file_dropped: {} baseline: - ratio: -", total - written);
    let rounds = std::env::var("LOG_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    multi_process(rounds);
    std::io::stdout().flush().unwrap();
}

/// A `MakeWriter` over a shared, locked file.
trait MakeWriterFn {
    fn make_writer_fn(self) -> impl Fn() -> SharedFile + Send + Sync + 'static;
}

struct SharedFile(std::sync::Arc<std::sync::Mutex<std::fs::File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

impl MakeWriterFn for std::sync::Arc<std::sync::Mutex<std::fs::File>> {
    fn make_writer_fn(self) -> impl Fn() -> SharedFile + Send + Sync + 'static {
        move || SharedFile(self.clone())
    }
}
