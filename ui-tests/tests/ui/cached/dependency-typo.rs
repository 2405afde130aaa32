use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    items: Vec<i32>,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached]
    #[dependency(itmes)]
    fn total(&self) -> i32 {
        self.items.iter().sum()
    }
}

fn main() {}
