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
    fn scaled(&self, factor: i32) -> i32 {
        self.x * factor
    }
}

fn main() {}
