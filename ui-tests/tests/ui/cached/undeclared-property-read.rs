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

    // Reads `doubled` without declaring it: stale after `set_x`.
    #[cached]
    fn quadrupled(&self) -> i32 {
        self.doubled() * 2
    }
}

fn main() {}
