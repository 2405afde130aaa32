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
}

// The properties of a struct live in one block: this one is an error (one),
// and its callers below add none.
#[cached]
impl S {
    #[cached]
    #[dependency(x)]
    fn tripled(&self) -> i32 {
        self.x * 3
    }

    fn plain(&self) -> i32 {
        self.x
    }
}

fn main() {
    let s = S { x: 1, cache: Cache::new() };
    let _: i32 = *s.doubled() + *s.tripled() + s.plain();
}
