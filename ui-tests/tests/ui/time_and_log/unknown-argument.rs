#[serve_common::time_and_log("running f({y})")]
fn f(x: u32) -> u32 {
    x
}

fn main() {}
