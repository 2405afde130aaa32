#[serve_common::time_and_log("running f", unit = "ms")]
fn f() {}

fn main() {}
