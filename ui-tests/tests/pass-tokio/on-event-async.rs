//! `async fn` handlers compile (with serve-common's `tokio` feature) and
//! leak no lint.
#![forbid(unsafe_code)]
#![deny(warnings)]

use serve_common::on_event;

#[derive(serde::Deserialize)]
struct Job {
    id: u64,
}

#[on_event("job.async")]
async fn async_nothing() {}

#[on_event("job.async.*", ack)]
async fn async_name_and_payload(event: &str, job: &Job) -> Result<(), String> {
    tokio_yield().await;
    let _ = (event, job.id);
    Ok(())
}

#[on_event("job.async.once", one_per_service)]
async fn async_payload(job: &Job) -> Result<(), std::io::Error> {
    let _ = job.id;
    Ok(())
}

async fn tokio_yield() {}

fn main() {}
