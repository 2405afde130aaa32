//! `bash bench/logging.sh`: `#[time_and_log]` off and on (criterion), and
//! lines/s to the file output from 2 threads, each against its baseline in
//! the same run.

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

fn main() {
    let dir = tempfile::tempdir().unwrap();
    config::init(
        Config::builder()
            .no_file()
            .no_env()
            .default_value("logging.level", "INFO"),
    )
    .unwrap();
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
