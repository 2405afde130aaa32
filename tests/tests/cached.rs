//! Cached properties: counts of real computations, real threads.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use serve_common::prelude::*;

/// How many times each property was computed.
#[derive(Default, Debug)]
struct Calls(std::sync::Mutex<BTreeMap<&'static str, usize>>);

impl Calls {
    fn hit(&self, name: &'static str) {
        *self.0.lock().unwrap().entry(name).or_default() += 1;
    }

    fn of(&self, name: &'static str) -> usize {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// a (input) -> b -> c -> d, and e independent; label is a plain property.
#[derive(Cached)]
struct Chain {
    #[input]
    a: i64,
    e_base: i64,
    label_text: String,
    calls: Calls,
    cache: Cache<Self>,
}

#[cached]
impl Chain {
    fn new(a: i64) -> Self {
        Self {
            a,
            e_base: 100,
            label_text: "x".into(),
            calls: Calls::default(),
            cache: Cache::new(),
        }
    }

    // Declared before what it depends on: order does not matter.
    #[cached]
    #[dependency(c, label)]
    fn d(&self) -> String {
        self.calls.hit("d");
        format!("{}:{}", self.label(), self.c())
    }

    #[cached]
    #[dependency(a)]
    fn b(&self) -> i64 {
        self.calls.hit("b");
        self.a * 2
    }

    #[cached]
    #[dependency(b)]
    fn c(&self) -> i64 {
        self.calls.hit("c");
        self.b() + 1
    }

    #[cached]
    fn e(&self) -> i64 {
        self.calls.hit("e");
        self.e_base
    }

    /// A plain (uncached) property with a setter.
    fn label(&self) -> &str {
        &self.label_text
    }

    #[setter(label)]
    fn set_label(&mut self, text: &str) {
        self.label_text = text.to_owned();
    }

    #[setter(e)]
    fn set_e_base(&mut self, base: i64) -> Result<(), String> {
        if base < 0 {
            return Err("negative".into());
        }
        self.e_base = base;
        Ok(())
    }
}

#[test]
fn first_read_computes_once_and_hits_do_not_recompute() {
    let chain = Chain::new(5);
    assert_eq!(chain.calls.of("d"), 0, "nothing is computed before a read");
    assert_eq!(chain.d(), "x:11");
    assert_eq!(chain.d(), "x:11");
    assert_eq!(*chain.c(), 11);
    assert_eq!(*chain.b(), 10);
    for name in ["b", "c", "d"] {
        assert_eq!(chain.calls.of(name), 1, "{name}");
    }
    assert_eq!(chain.calls.of("e"), 0);
}

#[test]
fn setting_an_input_invalidates_its_transitive_dependents_only() {
    let mut chain = Chain::new(5);
    let _ = (chain.d(), chain.e());
    chain.set_a(7);
    assert_eq!(chain.a, 7);
    assert_eq!(chain.d(), "x:15");
    assert_eq!(
        (
            chain.calls.of("b"),
            chain.calls.of("c"),
            chain.calls.of("d")
        ),
        (2, 2, 2)
    );
    assert_eq!(*chain.e(), 100);
    assert_eq!(
        chain.calls.of("e"),
        1,
        "an unrelated property was not cleared"
    );
}

#[test]
fn a_plain_property_setter_invalidates_its_dependents() {
    let mut chain = Chain::new(1);
    assert_eq!(chain.d(), "x:3");
    chain.set_label("y");
    assert_eq!(chain.d(), "y:3");
    assert_eq!(chain.calls.of("d"), 2);
    assert_eq!(
        (chain.calls.of("b"), chain.calls.of("c")),
        (1, 1),
        "upstream values were kept"
    );
}

#[test]
fn a_setter_invalidates_its_own_property_even_when_it_fails() {
    let mut chain = Chain::new(1);
    assert_eq!(*chain.e(), 100);
    chain.set_e_base(3).unwrap();
    assert_eq!(
        *chain.e(),
        3,
        "the setter's property is recomputed, not stored"
    );
    assert!(chain.set_e_base(-1).is_err());
    assert_eq!(*chain.e(), 3);
    assert_eq!(chain.calls.of("e"), 3);

    // Nothing else was cleared by `e`'s setter.
    let _ = chain.d();
    chain.set_e_base(4).unwrap();
    let _ = chain.d();
    assert_eq!(
        (
            chain.calls.of("b"),
            chain.calls.of("c"),
            chain.calls.of("d")
        ),
        (1, 1, 1)
    );
}

/// Getters named like the fields they read: the usual Rust shape.
#[derive(Cached)]
struct Named {
    #[input]
    n: u32,
    #[input]
    label: String,
    cache: Cache<Self>,
}

#[cached]
impl Named {
    /// No declared dependency: same-named input field still invalidates it.
    #[cached]
    fn n(&self) -> u32 {
        self.n * 2
    }

    /// Its own name in `#[dependency]` is the field, not a cycle.
    #[cached]
    #[dependency(label)]
    fn label(&self) -> String {
        self.label.to_uppercase()
    }

    #[cached]
    #[dependency(n, label)]
    fn both(&self) -> String {
        format!("{}{}", self.n(), self.label())
    }

    /// Owned function types are fine (not borrows).
    #[cached]
    #[dependency(label)]
    fn checker(&self) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
        let label = self.label.clone();
        Box::new(move |s: &str| s == label)
    }

    /// A generic setter whose type parameter cannot be inferred from the
    /// call inside the generated wrapper without a turbofish.
    #[setter(n)]
    fn set_n_from<T: Into<u32>>(&mut self, value: T) {
        self.n = value.into();
    }
}

#[test]
fn fields_and_getters_of_the_same_name() {
    let mut named = Named {
        n: 1,
        label: "a".into(),
        cache: Cache::new(),
    };
    assert_eq!(
        (*named.n(), named.label().as_str(), named.both().as_str()),
        (2, "A", "2A")
    );
    named.set_n(5);
    assert_eq!(
        *named.n(),
        10,
        "setting the field cleared the same-named getter"
    );
    assert_eq!(named.both(), "10A");
    named.set_label("b".into());
    assert_eq!(
        (named.label().as_str(), named.both().as_str()),
        ("B", "10B")
    );
    named.set_n_from(7_u8);
    assert_eq!((*named.n(), named.both().as_str()), (14, "14B"));
    assert!((named.checker())("b"));
}

#[test]
fn explicit_invalidation_is_the_deleter() {
    let mut chain = Chain::new(2);
    let _ = chain.d();
    chain.invalidate_c();
    let _ = chain.d();
    assert_eq!(
        (
            chain.calls.of("b"),
            chain.calls.of("c"),
            chain.calls.of("d")
        ),
        (1, 2, 2)
    );
    chain.invalidate_d();
    let _ = chain.d();
    assert_eq!((chain.calls.of("c"), chain.calls.of("d")), (2, 3));
}

/// The Python original README's example, in Rust.
#[derive(Cached)]
struct C {
    var: i32,
    cache: Cache<Self>,
}

#[cached]
impl C {
    #[cached]
    fn some_var(&self) -> i32 {
        self.var
    }

    #[setter(some_var)]
    fn set_some_var(&mut self, val: i32) {
        self.var = val;
    }

    #[cached]
    #[dependency(some_var)]
    fn double_var(&self) -> i32 {
        2 * self.some_var()
    }
}

#[cached]
impl C2 {
    /// `Self` in a cached type.
    #[cached]
    #[dependency(n)]
    fn next(&self) -> Box<Self> {
        Box::new(C2 {
            n: self.n + 1,
            cache: Cache::new(),
        })
    }
}

#[derive(Cached)]
struct C2 {
    #[input]
    n: u8,
    cache: Cache<Self>,
}

#[test]
fn self_in_a_cached_type_and_an_impl_before_its_struct() {
    let mut c = C2 {
        n: 1,
        cache: Cache::new(),
    };
    assert_eq!(c.next().next().n, 3);
    c.set_n(5);
    assert_eq!(c.next().n, 6);
}

#[test]
fn the_seed_readme_example() {
    let mut c = C {
        var: 42,
        cache: Cache::new(),
    };
    assert_eq!((*c.some_var(), *c.double_var()), (42, 84));
    c.set_some_var(1);
    assert_eq!((*c.some_var(), *c.double_var()), (1, 2));
}

#[derive(Cached)]
struct Slow {
    #[input]
    input: u64,
    computed: AtomicUsize,
    cache: Cache<Self>,
}

#[cached]
impl Slow {
    #[cached]
    #[dependency(input)]
    fn value(&self) -> Vec<u64> {
        self.computed.fetch_add(1, Ordering::SeqCst);
        // Enough work that racing first reads overlap.
        (0..20_000).map(|i| i * self.input).collect()
    }
}

fn assert_sync<T: Send + Sync>(_: &T) {}

#[test]
fn concurrent_first_reads_compute_once_per_invalidation() {
    let mut slow = Slow {
        input: 3,
        computed: AtomicUsize::new(0),
        cache: Cache::new(),
    };
    assert_sync(&slow);
    for round in 1..=3 {
        let threads = 8;
        let barrier = Barrier::new(threads);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    barrier.wait();
                    assert_eq!(slow.value()[1], slow.input);
                });
            }
        });
        assert_eq!(slow.computed.load(Ordering::SeqCst), round);
        slow.set_input(round as u64 + 10);
    }
}

/// A generic struct whose impl adds bounds, with non-`Copy` values.
#[derive(Cached, Clone, Debug, PartialEq)]
struct Bag<T: Clone + Ord + std::fmt::Debug> {
    #[input]
    items: Vec<T>,
    cache: Cache<Self>,
}

#[cached]
impl<T: Clone + Ord + std::fmt::Debug + Send + Sync> Bag<T> {
    #[cached]
    #[dependency(items)]
    fn sorted(&self) -> Arc<Vec<T>> {
        let mut items = self.items.clone();
        items.sort();
        Arc::new(items)
    }

    #[cached]
    #[dependency(sorted)]
    fn largest(&self) -> Option<T> {
        self.sorted().last().cloned()
    }
}

#[test]
fn generic_structs_and_non_copy_values() {
    let mut bag = Bag {
        items: vec!["pear".to_owned(), "apple".to_owned()],
        cache: Cache::new(),
    };
    assert_eq!(**bag.sorted(), ["apple", "pear"]);
    assert_eq!(bag.largest().as_deref(), Some("pear"));
    bag.set_items(vec!["zucchini".to_owned()]);
    assert_eq!(bag.largest().as_deref(), Some("zucchini"));

    // Clones start with an empty cache and compare by value.
    let clone = bag.clone();
    assert_eq!(clone, bag);
    assert_eq!(clone.largest().as_deref(), Some("zucchini"));

    let numbers = Bag {
        items: vec![3, 1, 2],
        cache: Cache::new(),
    };
    assert_eq!(*numbers.largest(), Some(3));
}

/// Counts its computations; a clone must count its own.
#[derive(Cached, Clone)]
struct Counted {
    #[input]
    n: u64,
    computed: Arc<AtomicUsize>,
    cache: Cache<Self>,
}

#[cached]
impl Counted {
    #[cached]
    #[dependency(n)]
    fn squared(&self) -> u64 {
        self.computed.fetch_add(1, Ordering::SeqCst);
        self.n * self.n
    }
}

#[test]
fn a_clone_starts_with_an_empty_cache() {
    let computed = Arc::new(AtomicUsize::new(0));
    let original = Counted {
        n: 3,
        computed: computed.clone(),
        cache: Cache::new(),
    };
    assert_eq!(*original.squared(), 9);
    assert_eq!(*original.squared(), 9);
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    let clone = original.clone();
    assert_eq!(*clone.squared(), 9);
    assert_eq!(
        computed.load(Ordering::SeqCst),
        2,
        "the clone computed its own value"
    );
    assert_eq!(*clone.squared(), 9);
    assert_eq!(computed.load(Ordering::SeqCst), 2);
}

/// The first-week shape: a map changed in place, and an index over it.
#[derive(Cached)]
struct Store {
    #[input(pub, setter = replace_notes)]
    notes: std::collections::HashMap<String, String>,
    calls: Calls,
    cache: Cache<Self>,
}

#[cached]
impl Store {
    #[cached]
    #[dependency(notes)]
    fn keys(&self) -> Vec<String> {
        self.calls.hit("keys");
        let mut keys: Vec<String> = self.notes.keys().cloned().collect();
        keys.sort();
        keys
    }

    #[cached]
    #[dependency(keys)]
    fn count(&self) -> usize {
        self.keys().len()
    }

    /// Changes the field in place: its dependents are cleared.
    #[setter(notes)]
    fn add(&mut self, key: &str, text: &str) {
        self.notes.insert(key.to_owned(), text.to_owned());
    }

    /// A second setter of the same field.
    #[setter(notes)]
    fn remove(&mut self, key: &str) -> Option<String> {
        self.notes.remove(key)
    }
}

#[test]
fn a_setter_changes_an_input_field_in_place() {
    let mut store = Store {
        notes: Default::default(),
        calls: Calls::default(),
        cache: Cache::new(),
    };
    assert_eq!(*store.count(), 0);
    store.add("b", "second");
    store.add("a", "first");
    assert_eq!(*store.keys(), ["a", "b"]);
    assert_eq!(*store.count(), 2);
    assert_eq!(store.calls.of("keys"), 2);
    assert_eq!(store.remove("a").as_deref(), Some("first"));
    assert_eq!(*store.count(), 1);
    // The derive's setter, renamed, clears the same properties.
    store.replace_notes([("z".to_owned(), String::new())].into());
    assert_eq!(*store.keys(), ["z"]);
    assert_eq!(store.calls.of("keys"), 4);
}

/// Parsed once it parses; an error is returned, not kept.
#[derive(Cached)]
struct Source {
    #[input]
    text: String,
    calls: Calls,
    cache: Cache<Self>,
}

#[cached]
impl Source {
    #[cached(result)]
    #[dependency(text)]
    fn number(&self) -> Result<u64, std::num::ParseIntError> {
        self.calls.hit("number");
        self.text.trim().parse()
    }

    /// An alias of `Result` works too.
    #[cached(result)]
    #[dependency(text)]
    fn length(&self) -> std::io::Result<usize> {
        if self.text.is_empty() {
            return Err(std::io::Error::other("empty"));
        }
        Ok(self.text.len())
    }
}

#[test]
fn result_properties_keep_only_ok() {
    let mut source = Source {
        text: "x".into(),
        calls: Calls::default(),
        cache: Cache::new(),
    };
    assert!(source.number().is_err());
    assert!(source.number().is_err());
    assert_eq!(source.calls.of("number"), 2, "an error is computed again");
    source.set_text(" 42 ".into());
    assert_eq!(source.number(), Ok(&42));
    assert_eq!(source.number(), Ok(&42));
    assert_eq!(source.calls.of("number"), 3, "an Ok is kept");
    assert_eq!(source.length().unwrap(), &4);
    source.set_text(String::new());
    assert!(source.length().is_err());
    assert!(source.number().is_err());
    assert_eq!(source.calls.of("number"), 4);
}
