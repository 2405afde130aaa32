//! Shared by the criterion benchmarks: a quick criterion and its medians.

use std::path::Path;
use std::time::Duration;

use criterion::Criterion;

/// Criterion writing its results under `dir`, with short runs.
pub(crate) fn criterion(dir: &Path) -> Criterion {
    Criterion::default()
        .output_directory(dir)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// The median (ns) criterion measured for benchmark `id`.
pub(crate) fn median_ns(dir: &Path, id: &str) -> f64 {
    let path = dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let estimates: serde_json::Value = serde_json::from_str(&text).unwrap();
    estimates["median"]["point_estimate"].as_f64().unwrap()
}

/// One metric line: `<metric>: <value> baseline: <value> ratio: <value/baseline>`.
pub(crate) fn line(metric: &str, value: f64, baseline: f64) {
    println!(
        "{metric}: {value:.2} baseline: {baseline:.2} ratio: {:.3}",
        value / baseline
    );
}
