use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

// `#[cached]` is missing here: one error, on the cached method.
impl S {
    #[cached]
    #[dependency(x)]
    fn doubled(&self) -> i32 {
        self.x * 2
    }
}

fn main() {
    let s = S { x: 1, cache: Cache::new() };
    let _: &i32 = s.doubled();
}
