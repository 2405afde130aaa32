//! Accepted `#[derive(Cached)]` / `#[cached]` shapes compile, in a crate
//! that forbids unsafe code.
#![forbid(unsafe_code)]
#![deny(warnings)]
// Checked by `cargo clippy --all-targets` too (each is an example of
// this crate): generated code must leak no pedantic lint.
#![warn(clippy::pedantic)]

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

/// The impl may come before the struct; setters change an input in place;
/// reads inside macros and through `Self::` are declared.
#[cached]
impl Store {
    #[cached]
    #[dependency(notes)]
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.notes.keys().cloned().collect();
        keys.sort();
        keys
    }

    #[cached]
    #[dependency(keys)]
    fn summary(&self) -> String {
        format!("{} notes: {:?}", Self::keys(self).len(), self.keys())
    }

    #[setter(notes)]
    fn add(&mut self, key: &str) {
        self.notes.insert(key.to_owned(), String::new());
    }

    #[setter(notes)]
    fn clear(&mut self) {
        self.notes.clear();
    }
}

#[derive(Cached)]
struct Store {
    #[input(pub(crate), setter = replace_notes)]
    notes: std::collections::HashMap<String, String>,
    cache: Cache<Self>,
}

/// One generic block for every instantiation: a `where` clause narrows
/// one property to the `T` it needs.
#[derive(Cached)]
struct Wrapper<T> {
    #[input]
    value: T,
    cache: Cache<Self>,
}

#[cached]
impl<T> Wrapper<T> {
    #[cached]
    #[dependency(value)]
    fn doubled(&self) -> u64
    where
        T: Into<u64> + Copy,
    {
        self.value.into() * 2
    }

    #[cached]
    #[dependency(value)]
    fn length(&self) -> usize
    where
        T: AsRef<str>,
    {
        self.value.as_ref().len()
    }
}

fn main() {
    let mut number = Wrapper {
        value: 2_u32,
        cache: Cache::new(),
    };
    let _: u64 = *number.doubled();
    number.set_value(3);
    let text = Wrapper {
        value: String::from("abc"),
        cache: Cache::new(),
    };
    let _: usize = *text.length();
    let mut store = Store {
        notes: std::collections::HashMap::new(),
        cache: Cache::new(),
    };
    store.add("a");
    let _ = store.summary();
    store.clear();
    store.replace_notes(std::collections::HashMap::new());
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
