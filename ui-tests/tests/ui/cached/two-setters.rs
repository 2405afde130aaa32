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

    #[setter(doubled)]
    fn set_doubled(&mut self, value: i32) {
        self.x = value / 2;
    }

    #[setter(doubled)]
    fn set_doubled_too(&mut self, value: i32) {
        self.x = value / 2;
    }
}

fn main() {}
