use serve_common::prelude::*;

#[time_and_log("adding", crate = 1)]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

fn main() {
    add(1, 2);
}
