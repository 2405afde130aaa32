use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    x: i32,
}

fn main() {}
