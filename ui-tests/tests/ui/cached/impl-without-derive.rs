use serve_common::prelude::*;

struct S {
    x: i32,
}

#[cached]
impl S {
    #[cached]
    fn doubled(&self) -> i32 {
        self.x * 2
    }
}

fn main() {}
