//! Accepted `#[time_and_log]` shapes compile and leak no lint.
#![forbid(unsafe_code)]
#![deny(warnings)]
// Checked by `cargo clippy --all-targets` too (each is an example of
// this crate): generated code must leak no pedantic lint.
#![warn(clippy::pedantic)]

use serve_common::prelude::*;

/// An expression body (a block as the tail must not trip `unused_braces`).
#[time_and_log("length of {path}")]
fn length(path: &str) -> usize {
    path.len()
}

/// No placeholders, a level, an early return.
#[time_and_log("checking", level = "info")]
fn check(n: u32) -> Result<u32, String> {
    if n == 0 {
        return Err("zero".to_owned());
    }
    Ok(n * 2)
}

/// A method, and `{{` escapes.
struct Store;

impl Store {
    #[time_and_log("saving {{literally}} {key}")]
    fn save(&self, key: &str) -> bool {
        let _ = self;
        !key.is_empty()
    }
}

/// An async fn.
#[time_and_log("fetching {id}")]
async fn fetch(id: u64) -> u64 {
    std::future::ready(id).await
}

fn main() {
    let _ = length("a");
    let _ = check(1);
    let _ = Store.save("k");
    drop(fetch(1));
}
