//! Cached properties: computed on first read, served from the cache after,
//! invalidated by setters along a dependency graph checked at compile time.
//! The Python original's `cached_property` module.
//!
//! ```
//! use serve_common::prelude::*;
//!
//! #[derive(Cached)]
//! struct C {
//!     var: i32,
//!     cache: Cache<Self>,
//! }
//!
//! #[cached]
//! impl C {
//!     #[cached]
//!     fn some_var(&self) -> i32 {
//!         self.var
//!     }
//!
//!     #[setter(some_var)]
//!     fn set_some_var(&mut self, val: i32) {
//!         self.var = val;
//!     }
//!
//!     #[cached]
//!     #[dependency(some_var)]
//!     fn double_var(&self) -> i32 {
//!         2 * self.some_var()
//!     }
//! }
//!
//! let mut c = C { var: 42, cache: Cache::new() };
//! assert_eq!(*c.double_var(), 84);   // computed once, then a cache hit
//! c.set_some_var(1);                 // clears some_var and double_var
//! assert_eq!(*c.double_var(), 2);
//! ```
//!
//! # What the macros do
//!
//! - `#[derive(Cached)]` on the struct finds the cache slot (the field of
//!   type [`Cache<Self>`](Cache), or the one marked `#[cache]`) and, for each
//!   field marked `#[input]`, generates `set_<field>(&mut self, value)`,
//!   which assigns and invalidates every property that depends on the field.
//!   Assigning an input field directly bypasses invalidation: keep input
//!   fields private and go through the setter.
//! - `#[cached]` on an `impl` block turns the methods marked `#[cached]`
//!   (`fn name(&self) -> T`, `T` owned) into cached properties: the method
//!   now returns `&T`, computed on the first read and served from the cache
//!   until invalidated. Reads take `&self` and are safe across threads: the
//!   struct stays `Send`/`Sync` when its values are, and concurrent first
//!   reads run the computation once (a [`OnceLock`](std::sync::OnceLock) per
//!   property). A hit costs about a field read.
//! - `#[dependency(a, b, ...)]` on a cached method names what it reads: other
//!   cached properties, plain properties (methods with a `#[setter]`), or
//!   `#[input]` fields, in any order in the impl.
//! - **The body is checked against the declaration.** A compute body that
//!   reads another cached property (`self.b()`, `Self::b(self)`), a plain
//!   property with a setter, or an `#[input]` field (`self.x`) without
//!   naming it in `#[dependency(...)]` is a compile error on the read,
//!   saying what to add: undeclared, it would go stale silently. Reads
//!   inside macro arguments (`format!("{}", self.x)`) count. A property
//!   reading itself is an error too (it would wait for its own value). What
//!   the walk cannot see is allowed: a read through a helper method
//!   (`self.helper()` that reads `self.x`) or through another binding of
//!   `self`; declare those by hand.
//! - `#[setter(name)]` on a `&mut self` method makes it the setter of
//!   property `name`: after its body runs, `name` (if cached) and every
//!   property depending on it, directly or transitively, are invalidated.
//!   The original stored the assigned value in the cache, which is wrong
//!   whenever the getter is not the setter's inverse; here the next read
//!   recomputes.
//! - `#[setter(field)]` may also name an `#[input]` field, to change it in
//!   place: `#[setter(notes)] fn add(&mut self, ..) { self.notes.insert(..) }`
//!   clears what depends on `notes`, like `set_notes` does. A field may have
//!   several such setters (`add`, `remove`, `clear`).
//! - `#[input(pub)]`, `#[input(pub(crate))]` set the generated setter's
//!   visibility (default: the field's); `#[input(setter = name)]` its name
//!   (default: `set_<field>`).
//! - For each cached property, `invalidate_<name>(&mut self)` clears it and
//!   its dependents (the original's deleter).
//!
//! - A getter named like an `#[input]` field (`fn n(&self)` over a field
//!   `n`) is invalidated by that field's setter; in its own
//!   `#[dependency(...)]`, its name means the field.
//!
//! - With serve-common renamed in `Cargo.toml`, `#[cached(crate = "sc")]`
//!   on the impl block and `#[cache(crate = "sc")]` on the struct say
//!   where it is.
//!
//! Limits: one `#[cached]` impl block per struct, in the struct's module
//! (the two macros meet through generated items named after the struct).
//! The storage of the properties is one field whose layout the block
//! defines, the same for every instantiation of a generic struct: a second
//! block, even `impl W<String>` beside `impl W<u32>`, is one compile error,
//! "`__W_allows_one_cached_impl_block` is ambiguous", on the second block
//! (its callers add none). Put every property in the one block; in a
//! generic struct, a `where` clause on a cached method (`fn total(&self)
//! -> u64 where T: Into<u64> + Copy`) narrows that property alone, and
//! plain impl blocks (without `#[cached]`) may be as many as you like. (The
//! check is textual: a struct of the same name with its own `#[cached]`
//! block in a module declared further down the same file, `mod tests`
//! say, gets the same error; give it another name.) A
//! setter returns an owned value (it needs `&mut self` again after its
//! body); and in a generic struct, a cached type must not need the
//! struct's bounds (`Box<Self>` in a `struct S<T: Ord>`): the storage is
//! declared without bounds so that impl blocks may add their own.
//!
//! Invalidation is straight-line code generated per setter: it costs
//! O(dependents), whatever the number of properties. Mistakes (an unknown
//! dependency, with the similar name when there is one, a read not
//! declared, a cycle, a cached method with arguments or returning a
//! borrow, a setter for an unknown property, duplicates, one macro without
//! the other) are compile errors pointing at the offending token, one
//! error per mistake.
//!
//! ```
//! use std::collections::HashMap;
//! use serve_common::prelude::*;
//!
//! #[derive(Cached)]
//! struct Store {
//!     #[input(pub, setter = replace_notes)]
//!     notes: HashMap<String, String>,
//!     cache: Cache<Self>,
//! }
//!
//! #[cached]
//! impl Store {
//!     #[cached]
//!     #[dependency(notes)]
//!     fn keys(&self) -> Vec<String> {
//!         let mut keys: Vec<String> = self.notes.keys().cloned().collect();
//!         keys.sort();
//!         keys
//!     }
//!
//!     #[setter(notes)]
//!     fn add(&mut self, key: &str, text: &str) {
//!         self.notes.insert(key.into(), text.into());
//!     }
//! }
//!
//! let mut store = Store { notes: HashMap::new(), cache: Cache::new() };
//! store.add("b", "");
//! store.add("a", "");
//! assert_eq!(*store.keys(), ["a", "b"]);
//! store.replace_notes(HashMap::new());
//! assert!(store.keys().is_empty());
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};

/// The cache slot of a struct with cached properties: one field of this
/// type, `cache: Cache<Self>`, built with [`Cache::new`] or `Default`.
///
/// Cloning gives an empty cache (the clone recomputes on first read);
/// comparisons and hashes ignore it, so deriving `Clone`, `PartialEq`,
/// `Eq`, `Hash` or `Debug` on the struct works and means what it should.
pub struct Cache<T: HasCache + ?Sized> {
    slots: <T::Key as CacheSlots>::Slots,
}

impl<T: HasCache + ?Sized> Cache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            slots: Default::default(),
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __slots(&self) -> &<T::Key as CacheSlots>::Slots {
        &self.slots
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __slots_mut(&mut self) -> &mut <T::Key as CacheSlots>::Slots {
        &mut self.slots
    }
}

impl<T: HasCache + ?Sized> Default for Cache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: HasCache + ?Sized> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T: HasCache + ?Sized> fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cache { .. }")
    }
}

impl<T: HasCache + ?Sized> PartialEq for Cache<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T: HasCache + ?Sized> Eq for Cache<T> {}

impl<T: HasCache + ?Sized> Hash for Cache<T> {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// Implemented by `#[derive(Cached)]`: where the cache slot is, and the
/// key type (the struct's generic parameters, without their bounds) that
/// the `#[cached]` impl attaches the storage to. Going through a key with
/// no bounds lets an impl block add bounds the struct does not have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has a `#[cached]` impl but no `#[derive(Cached)]`",
    label = "add `#[derive(Cached)]` to the definition of `{Self}`",
    note = "the derive finds the `cache: Cache<Self>` field and generates the setters of `#[input]` fields"
)]
pub trait HasCache {
    #[doc(hidden)]
    type Key: CacheSlots + CacheAccess<Self> + ?Sized;
}

/// Implemented by `#[derive(Cached)]` for its key: reaches the slots.
///
/// The derive names the slots type that the `#[cached]` impl defines, and
/// the impl reaches the slots only through the key that the derive defines:
/// so either macro without the other is one error, "cannot find type
/// `__S_needs_cached_impl`" or "... `__S_needs_derive_Cached`", not one
/// per method.
#[doc(hidden)]
pub trait CacheAccess<Owner: ?Sized>: CacheSlots {
    #[doc(hidden)]
    fn __slots(owner: &Owner) -> &Self::Slots;

    #[doc(hidden)]
    fn __slots_mut(owner: &mut Owner) -> &mut Self::Slots;
}

/// Implemented by `#[derive(Cached)]` for the key of [`HasCache`], with
/// the storage the `#[cached]` impl defines: the cached properties' slots
/// and how setting an `#[input]` field invalidates them.
#[diagnostic::on_unimplemented(
    message = "a `#[derive(Cached)]` struct has no `#[cached]` impl block",
    label = "add `#[cached]` to an impl block of this struct, with `#[cached]` methods",
    note = "`#[derive(Cached)]` and `#[cached] impl` work together"
)]
pub trait CacheSlots {
    /// One `OnceLock` per cached property (generated).
    #[doc(hidden)]
    type Slots: Default;

    /// Invalidates what depends on the `#[input]` field with this id.
    #[doc(hidden)]
    fn __invalidate_input(slots: &mut Self::Slots, input: u64);
}
