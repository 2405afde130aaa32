//! `bash bench/config.sh`: `Config::get` against nested hash maps, with
//! criterion; prints the medians as one metric line.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::Criterion;
use serve_common::config::Config;

fn median_ns(dir: &Path, id: &str) -> f64 {
    let path = dir.join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let estimates: serde_json::Value = serde_json::from_str(&text).unwrap();
    estimates["median"]["point_estimate"].as_f64().unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[a.b]\nc = \"short\"\nd = 1\n[x]\ny = 2\n").unwrap();
    let config = Config::builder()
        .path(&file)
        .no_env()
        .no_events()
        .build()
        .unwrap();
    assert_eq!(config.get::<String>("a.b.c").unwrap(), "short");

    // The baseline: three nested maps holding the same value, and the clone.
    let mut inner: HashMap<String, toml::Value> = HashMap::new();
    inner.insert("c".into(), toml::Value::String("short".into()));
    inner.insert("d".into(), toml::Value::Integer(1));
    let mut middle = HashMap::new();
    middle.insert("b".to_owned(), inner);
    let mut outer = HashMap::new();
    outer.insert("a".to_owned(), middle);

    let out = dir.path().join("criterion");
    let mut criterion = Criterion::default()
        .output_directory(&out)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    criterion.bench_function("config_get", |b| {
        b.iter(|| black_box(config.get::<String>(black_box("a.b.c")).unwrap()))
    });
    criterion.bench_function("nested_hashmaps", |b| {
        b.iter(|| {
            let value = &outer[black_box("a")][black_box("b")][black_box("c")];
            match value {
                toml::Value::String(s) => black_box(s.clone()),
                _ => unreachable!(),
            }
        })
    });
    criterion.final_summary();
    let (ours, baseline) = (
        median_ns(&out, "config_get"),
        median_ns(&out, "nested_hashmaps"),
    );
    println!(
        "config_get_ns: {ours:.1} baseline: {baseline:.1} ratio: {:.3}",
        ours / baseline
    );
}
