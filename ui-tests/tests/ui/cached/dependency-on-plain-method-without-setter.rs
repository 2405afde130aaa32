use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    fn raw(&self) -> i32 {
        self.x
    }

    #[cached]
    #[dependency(raw)]
    fn doubled(&self) -> i32 {
        self.raw() * 2
    }
}

fn main() {}
