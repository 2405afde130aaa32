use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    #[input]
    y: i32,
    cache: Cache<Self>,
}

// Two independent mistakes: two errors, each on its token.
#[cached]
impl S {
    #[cached]
    #[dependency(x, z)]
    fn doubled(&self) -> i32 {
        self.x * 2
    }

    #[cached]
    #[dependency(y)]
    fn tripled(&mut self) -> i32 {
        self.y * 3
    }
}

fn main() {}
