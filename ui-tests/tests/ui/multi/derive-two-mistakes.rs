use serve_common::prelude::*;

// Two independent mistakes in the derive: two errors; the impl adds none.
#[derive(Cached)]
struct S {
    #[input(publik)]
    x: i32,
    #[input]
    #[input]
    y: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached]
    #[dependency(x, y)]
    fn sum(&self) -> i32 {
        self.x + self.y
    }
}

fn main() {}
