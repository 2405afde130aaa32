//! `bash bench/config.sh`: `Config::get` against nested hash maps, and a
//! read through a typed section's handle against a field read of the same
//! struct behind an `ArcSwap`, with criterion; prints the medians as one
//! metric line each.

mod common;

use std::collections::HashMap;
use std::hint::black_box;

use serve_common::config::Config;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[a.b]\nc = \"short\"\nd = 1\n[x]\ny = 2\n[notes]\nmax_notes = 10\ntitle = \"n\"\n",
    )
    .unwrap();
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
    let mut criterion = common::criterion(&out);
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
    #[derive(serde::Deserialize)]
    struct Notes {
        max_notes: u32,
        #[allow(dead_code)]
        title: String,
    }
    let section = config.section::<Notes>("notes").unwrap();
    let swapped = arc_swap::ArcSwap::from_pointee(Notes {
        max_notes: 10,
        title: "n".into(),
    });
    criterion.bench_function("config_section_get", |b| {
        b.iter(|| black_box(black_box(&section).read().max_notes))
    });
    criterion.bench_function("arcswap_field", |b| {
        b.iter(|| black_box(black_box(&swapped).load().max_notes))
    });
    criterion.final_summary();
    let (ours, baseline) = (
        common::median_ns(&out, "config_get"),
        common::median_ns(&out, "nested_hashmaps"),
    );
    common::line("config_get_ns", ours, baseline);
    common::line(
        "config_section_get_ns",
        common::median_ns(&out, "config_section_get"),
        common::median_ns(&out, "arcswap_field"),
    );
}
