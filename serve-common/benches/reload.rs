//! `bash bench/reload.sh`: time from a file write until the reload function
//! ran, default reloader against the polling one.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serve_common::reloading::{PollingReloader, Reloader, ReloaderKind};

const SAMPLES: usize = 20;

fn median_ms<T>(path: &Path, make: impl FnOnce(Box<dyn FnMut(&Path) + Send>) -> T) -> f64 {
    let (tx, rx) = mpsc::channel::<Instant>();
    let _reloader = make(Box::new(move |_: &Path| {
        let _ = tx.send(Instant::now());
    }));
    let mut samples = Vec::with_capacity(SAMPLES);
    // Writes land at spread-out phases of a poll interval, as real edits
    // do: a write right after a reload would always wait a full interval.
    let mut phase: u64 = 0x9e37_79b9;
    for n in 0..SAMPLES {
        phase = phase
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis((phase >> 33) % 1000));
        let start = Instant::now();
        std::fs::write(path, format!("sample = {n}\n")).unwrap();
        let ran = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the reload ran");
        samples.push(ran.duration_since(start).as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    samples[SAMPLES / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "start = true\n").unwrap();
    let default = median_ms(&path, |mut f| {
        let reloader = Reloader::new(&path, move |p: &Path| f(p)).unwrap();
        assert_eq!(reloader.kind(), ReloaderKind::Inotify);
        reloader
    });
    let polling = median_ms(&path, |mut f| {
        PollingReloader::new(&path, PollingReloader::DEFAULT_INTERVAL, move |p: &Path| {
            f(p)
        })
        .unwrap()
    });
    println!(
        "reload_ms: {default:.2} baseline: {polling:.2} ratio: {:.4}",
        default / polling
    );
}
