use serve_common::prelude::*;

#[derive(Cached)]
#[cache(crate = "serve_common")]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

#[cached(crate = serve_common)]
impl S {
    #[cached]
    #[dependency(x)]
    fn doubled(&self) -> i32 {
        self.x * 2
    }
}

fn main() {}
