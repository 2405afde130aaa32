const MESSAGE: &str = "running f";

#[serve_common::time_and_log(MESSAGE)]
fn f() {}

fn main() {}
