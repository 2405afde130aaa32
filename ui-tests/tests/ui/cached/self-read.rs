use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    x: i32,
    cache: Cache<Self>,
}

#[cached]
impl S {
    // Would wait for its own value forever.
    #[cached]
    #[dependency(x)]
    fn total(&self) -> i32 {
        if self.x > 0 {
            self.x
        } else {
            *self.total()
        }
    }
}

fn main() {}
