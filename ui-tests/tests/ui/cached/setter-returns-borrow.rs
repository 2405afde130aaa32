use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached]
    fn doubled(&self) -> i32 {
        self.x * 2
    }

    #[setter(doubled)]
    fn with_doubled(&mut self, value: i32) -> &mut Self {
        self.x = value / 2;
        self
    }
}

fn main() {}
