use serve_common::prelude::*;

#[derive(Cached)]
struct S {
    notes: Vec<String>,
    cache: Cache<Self>,
}

#[cached]
impl S {
    #[cached]
    fn count(&self) -> usize {
        0
    }

    // `notes` is a field but not `#[input]`.
    #[setter(notes)]
    fn add(&mut self, note: String) {
        self.notes.push(note);
    }
}

fn main() {}
