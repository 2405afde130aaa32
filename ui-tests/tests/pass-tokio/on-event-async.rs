//! `async fn` handlers compile (with serve-common's `tokio` feature) and
//! leak no lint.
#![forbid(unsafe_code)]
#![deny(warnings)]
// Checked by `cargo clippy --all-targets` too (each is an example of
// this crate): generated code must leak no pedantic lint.
#![warn(clippy::pedantic)]

use serve_common::on_event;

#[derive(serde::Deserialize)]
struct Job {
    id: u64,
}

#[on_event("job.async")]
async fn async_nothing() {
    tokio_yield().await;
}

#[on_event("job.async.*", ack)]
async fn async_name_and_payload(event: &str, job: &Job) -> Result<(), String> {
    tokio_yield().await;
    let _ = (event, job.id);
    Ok(())
}

#[on_event("job.async.once", one_per_service)]
async fn async_payload(job: &Job) -> Result<(), std::io::Error> {
    tokio_yield().await;
    let _ = job.id;
    Ok(())
}

async fn tokio_yield() {
    std::future::ready(()).await;
}

fn main() {}
