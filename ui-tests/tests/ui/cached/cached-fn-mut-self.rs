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
    fn bumped(&mut self) -> i32 {
        self.x += 1;
        self.x
    }
}

fn main() {}
