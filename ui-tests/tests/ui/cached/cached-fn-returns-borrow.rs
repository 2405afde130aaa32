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
    fn x_ref(&self) -> &i32 {
        &self.x
    }
}

fn main() {}
