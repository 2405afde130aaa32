//! Accepted `#[derive(Cached)]` / `#[cached]` shapes compile, in a crate
//! that forbids unsafe code.
#![forbid(unsafe_code)]

use serve_common::prelude::*;

#[derive(Cached)]
pub struct Model<'a, T: Clone, const N: usize> {
    #[input]
    pub(crate) items: [T; N],
    name: &'a str,
    #[cache]
    slot: Cache<Self>,
}

#[cached]
impl<'a, T: Clone + Default + Send + Sync, const N: usize> Model<'a, T, N> {
    /// Docs stay on the getter.
    #[cached]
    #[dependency(items, label)]
    pub fn first(&self) -> (T, String) {
        (self.items[0].clone(), self.label().to_owned())
    }

    pub fn label(&self) -> &'a str {
        self.name
    }

    #[setter(label)]
    pub fn rename(&mut self, name: &'a str) {
        self.name = name;
    }

    #[serve_common::cached]
    fn unit(&self) {}
}

fn main() {
    let mut model = Model {
        items: [1_u8, 2],
        name: "m",
        slot: Cache::new(),
    };
    let _ = model.first();
    model.set_items([3, 4]);
    model.rename("n");
    model.invalidate_first();
    model.unit();
}
