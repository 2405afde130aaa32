use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    #[input]
    y: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    // Reads the input `y` without declaring it: stale after `set_y`.
    #[cached]
    #[dependency(x)]
    fn sum(&self) -> i32 {
        self.x + self.y
    }
}

fn main() {}
