use serve_common::prelude::*;

#[derive(Cached)]
struct Wrapper<T> {
    #[input]
    value: T,
    cache: Cache<Self>,
}

#[cached]
impl Wrapper<u32> {
    #[cached]
    #[dependency(value)]
    fn doubled(&self) -> u32 {
        self.value * 2
    }
}

// One layout for every `Wrapper<T>`: a second block, even for another
// instantiation, is the same error. (One generic block with a `where`
// clause on the method is the way.)
#[cached]
impl Wrapper<String> {
    #[cached]
    #[dependency(value)]
    fn length(&self) -> usize {
        self.value.len()
    }
}

fn main() {}
