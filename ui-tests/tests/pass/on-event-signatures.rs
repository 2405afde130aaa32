//! Every accepted `#[on_event]` shape compiles.
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

#[on_event("job.started")]
fn nothing() {}

#[on_event("job.*", once)]
fn name_only(event: &str) {
    let _ = event;
}

#[on_event("re:job\\.\\d+", ack)]
fn payload_only(job: &Job) {
    let _ = job.id;
}

#[on_event("job.{done,failed}", once, ack = "job.handled")]
fn name_and_payload(event: &str, job: &Job) -> Result<(), String> {
    if job.id == 0 {
        return Err(format!("{event}: a job without an id"));
    }
    Ok(())
}

#[on_event("config:*", supervisor)]
fn also_in_the_supervisor(event: &str) {
    let _ = event;
}

fn main() {}
