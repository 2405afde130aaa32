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
    #[dependency(c)]
    fn a(&self) -> i32 {
        *self.c() + 1
    }

    #[cached]
    #[dependency(a)]
    fn b(&self) -> i32 {
        *self.a() + 1
    }

    #[cached]
    #[dependency(b, x)]
    fn c(&self) -> i32 {
        *self.b() + self.x
    }
}

fn main() {}
