use serve_common::prelude::*;

#[cached]
fn doubled(x: i32) -> i32 {
    x * 2
}

fn main() {}
