use serve_common::prelude::*;

#[on_event("job.done", crate = serve_common)]
fn done() {}

fn main() {}
