#[serve_common::time_and_log("running f", level = "loud")]
fn f() {}

fn main() {}
