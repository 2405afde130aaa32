use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    // Not `#[input]`: nothing invalidates what depends on it.
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached]
    #[dependency(x)]
    fn doubled(&self) -> i32 {
        self.x * 2
    }
}

fn main() {}
