use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
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

    // Not a cached method: nothing to compute.
    #[compute(inline)]
    fn tripled(&self) -> i32 {
        self.x * 3
    }
}

fn main() {}
