use serve_common::prelude::*;

// A path that names no crate: the compiler's error points at the option.
#[on_event("job.done", crate = "sc")]
fn done(_: &str) {}

fn main() {}
