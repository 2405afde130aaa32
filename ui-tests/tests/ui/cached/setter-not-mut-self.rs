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
    fn set_doubled(&self, value: i32) {
        let _ = value;
    }
}

fn main() {}
