use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    x: i32,
    cache: Cache<Self>,
}

fn main() {
    let _ = S { x: 1, cache: Cache::new() }.x;
}
