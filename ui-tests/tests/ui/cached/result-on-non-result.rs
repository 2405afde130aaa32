use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached(result)]
    #[dependency(x)]
    fn doubled(&self) -> Option<i32> {
        self.x.checked_mul(2)
    }
}

fn main() {}
