use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    #[input]
    name: String,
    cache: Cache<Self>,
}

#[cached]
impl S {
    // A read inside a macro's arguments counts too.
    #[cached]
    fn greeting(&self) -> String {
        format!("hello {}", self.name)
    }
}

fn main() {}
