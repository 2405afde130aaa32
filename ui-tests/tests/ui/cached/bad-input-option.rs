use serve_common::prelude::*;

// One error for the bad option; the impl and the setter still work.
#[derive(Cached)]
struct S {
    #[input(x)]
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

fn main() {
    let mut s = S { x: 1, cache: Cache::new() };
    s.set_x(2);
    let _ = s.doubled();
}
