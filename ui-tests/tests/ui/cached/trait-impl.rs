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
}

trait Named {
    fn name(&self) -> String;
}

#[cached]
impl Named for S {
    fn name(&self) -> String {
        "s".into()
    }
}

fn main() {}
