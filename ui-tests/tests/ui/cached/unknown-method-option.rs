use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached(lazy)]
    #[dependency(x)]
    fn doubled(&self) -> i32 {
        self.x * 2
    }
}

fn main() {}
