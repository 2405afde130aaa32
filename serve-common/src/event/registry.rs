//! Which handlers match a name: exact names in a hash map, globs and regexes
//! in one `RegexSet` rebuilt lazily, with a bounded per-name cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::Event;

pub(crate) type HandlerFn = dyn Fn(&Event) -> Result<(), String> + Send + Sync;

/// Where an acknowledgement goes once a handler returned.
#[derive(Clone, Debug)]
pub(crate) enum Ack {
    /// `completed:<event>`.
    Completed,
    /// A name of the registration's choosing.
    Named(Arc<str>),
}

/// A registered handler's code: run on the dispatcher thread, or (async)
/// started there and run on the bus's runtime.
#[derive(Clone)]
pub(crate) enum Handler {
    Sync(Arc<HandlerFn>),
    #[cfg(feature = "tokio")]
    Async(Arc<super::async_handlers::AsyncHandlerFn>),
}

pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) handler: Handler,
    pub(crate) once: bool,
    pub(crate) ack: Option<Ack>,
    pub(crate) label: Cow<'static, str>,
    /// Runs in a supervisor process too (see the event module's docs).
    pub(crate) in_supervisor: bool,
    /// Runs in one process of the service per event: the group's key.
    pub(crate) shared: Option<Arc<str>>,
}

enum Matcher {
    Set(RegexSet),
    /// Used only if the set cannot be built (size limits): slow, never wrong.
    /// Each regex keeps its index in `patterns`.
    Each(Vec<(u32, Regex)>),
}

/// How many distinct names the match cache remembers before it starts over.
const CACHE_LIMIT: usize = 4096;

#[derive(Default)]
pub(crate) struct Registry {
    next_id: u64,
    /// Looked up per event: a fast (seeded) hash, not SipHash.
    exact: foldhash::HashMap<Arc<str>, Vec<Arc<Entry>>>,
    /// In registration order, with the anchored regex of each.
    patterns: Vec<(Arc<Entry>, String)>,
    /// `None` when `patterns` changed since it was built.
    matcher: Option<Matcher>,
    cache: foldhash::HashMap<Box<str>, Arc<[u32]>>,
    /// For unregistering: the exact name, or `None` for a pattern.
    index: HashMap<u64, Option<Arc<str>>>,
    /// Each pattern's literal prefix (every name it matches starts so):
    /// what a transport subscribes to.
    prefixes: HashMap<u64, Arc<str>>,
}

/// A one-per-service registration, as a link routes it: its group's key
/// and what it can match (as in [`Interest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SharedInterest {
    pub(crate) key: Arc<str>,
    pub(crate) interest: Interest,
}

/// Which names this process's handlers can match: exact names, and
/// literal prefixes of patterns (`""` for a pattern that may match any
/// name). A transport subscribes to (at least) these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    pub(crate) exact: Vec<Arc<str>>,
    pub(crate) prefixes: Vec<Arc<str>>,
}

impl Registry {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn insert_exact(&mut self, name: Arc<str>, entry: Entry) {
        self.index.insert(entry.id, Some(name.clone()));
        self.exact.entry(name).or_default().push(Arc::new(entry));
    }

    pub(crate) fn insert_pattern(&mut self, regex: String, prefix: Arc<str>, entry: Entry) {
        self.index.insert(entry.id, None);
        self.prefixes.insert(entry.id, prefix);
        self.patterns.push((Arc::new(entry), regex));
        self.invalidate();
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.index.remove(&id) {
            None => false,
            Some(Some(name)) => {
                if let Some(list) = self.exact.get_mut(&name) {
                    list.retain(|e| e.id != id);
                    if list.is_empty() {
                        self.exact.remove(&name);
                    }
                }
                true
            }
            Some(None) => {
                self.prefixes.remove(&id);
                self.patterns.retain(|(e, _)| e.id != id);
                self.invalidate();
                true
            }
        }
    }

    pub(crate) fn interest(&self) -> Interest {
        let mut prefixes: Vec<Arc<str>> = self.prefixes.values().cloned().collect();
        prefixes.sort();
        prefixes.dedup();
        let mut exact: Vec<Arc<str>> = self.exact.keys().cloned().collect();
        exact.sort();
        Interest { exact, prefixes }
    }

    /// The one-per-service registrations that run here (all of them with
    /// `application`, else those that run in a supervisor), by key.
    pub(crate) fn shared(&self, application: bool) -> Vec<SharedInterest> {
        let runs = |e: &Entry| application || e.in_supervisor;
        let mut out: std::collections::BTreeMap<Arc<str>, Interest> = Default::default();
        for (name, entries) in &self.exact {
            for key in entries
                .iter()
                .filter(|e| runs(e))
                .filter_map(|e| e.shared.clone())
            {
                out.entry(key).or_default().exact.push(name.clone());
            }
        }
        for (entry, _) in &self.patterns {
            if !runs(entry) {
                continue;
            }
            if let (Some(key), Some(prefix)) = (&entry.shared, self.prefixes.get(&entry.id)) {
                out.entry(key.clone())
                    .or_default()
                    .prefixes
                    .push(prefix.clone());
            }
        }
        out.into_iter()
            .map(|(key, mut interest)| {
                interest.exact.sort();
                interest.exact.dedup();
                interest.prefixes.sort();
                interest.prefixes.dedup();
                SharedInterest { key, interest }
            })
            .collect()
    }

    /// Every one-per-service group key, and whether it runs here.
    pub(crate) fn shared_keys(&self, application: bool) -> Vec<(Arc<str>, bool)> {
        let mut keys: std::collections::BTreeMap<Arc<str>, bool> = Default::default();
        let entries = self
            .exact
            .values()
            .flatten()
            .chain(self.patterns.iter().map(|(e, _)| e));
        for entry in entries {
            if let Some(key) = &entry.shared {
                *keys.entry(key.clone()).or_default() |= application || entry.in_supervisor;
            }
        }
        keys.into_iter().collect()
    }

    /// The one-per-service group keys whose handlers match `name`
    /// (single-use ones are left registered: this is not a dispatch).
    pub(crate) fn shared_keys_for(&mut self, name: &str) -> Vec<Arc<str>> {
        let mut keys: Vec<Arc<str>> = self
            .exact
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|e| e.shared.clone())
            .collect();
        if self.patterns.iter().any(|(e, _)| e.shared.is_some()) {
            let found = self.pattern_matches(name);
            keys.extend(
                found
                    .iter()
                    .filter_map(|&i| self.patterns[i as usize].0.shared.clone()),
            );
        }
        keys.sort();
        keys.dedup();
        keys
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn invalidate(&mut self) {
        self.matcher = None;
        self.cache.clear();
    }

    fn matcher(&mut self) -> &Matcher {
        self.matcher.get_or_insert_with(|| {
            let sources = self.patterns.iter().map(|(_, re)| re.as_str());
            match RegexSetBuilder::new(sources)
                .size_limit(256 << 20)
                .dfa_size_limit(64 << 20)
                .build()
            {
                Ok(set) => Matcher::Set(set),
                Err(e) => {
                    tracing::warn!(error = %e, patterns = self.patterns.len(),
                        "event patterns do not fit one regex set; matching them one by one");
                    Matcher::Each(
                        self.patterns
                            .iter()
                            .enumerate()
                            .filter_map(|(i, (entry, re))| match Regex::new(re) {
                                Ok(regex) => Some((i as u32, regex)),
                                Err(error) => {
                                    tracing::error!(handler = %entry.label, %error,
                                        "event pattern does not compile; its handler will not run");
                                    None
                                }
                            })
                            .collect(),
                    )
                }
            }
        })
    }

    fn pattern_matches(&mut self, name: &str) -> Arc<[u32]> {
        if let Some(hit) = self.cache.get(name) {
            return hit.clone();
        }
        let found: Arc<[u32]> = match self.matcher() {
            Matcher::Set(set) => set
                .matches(name.as_bytes())
                .into_iter()
                .map(|i| i as u32)
                .collect(),
            Matcher::Each(each) => each
                .iter()
                .filter(|(_, re)| re.is_match(name.as_bytes()))
                .map(|(i, _)| *i)
                .collect(),
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(name.into(), found.clone());
        found
    }

    /// Pushes the handlers matching `name` that pass `take` onto `out`,
    /// in registration order, and removes the single-use ones among them
    /// (not the ones `take` leaves: they have not run). Whether a
    /// one-per-service entry was removed (the groups changed).
    pub(crate) fn collect(
        &mut self,
        name: &str,
        out: &mut Vec<Arc<Entry>>,
        take: impl Fn(&Entry) -> bool,
    ) -> bool {
        let first = out.len();
        self.collect_all(name, out);
        let mut i = first;
        while i < out.len() {
            if take(&out[i]) {
                i += 1;
            } else {
                out.remove(i);
            }
        }
        let mut shared_removed = false;
        if out[first..].iter().any(|e| e.once) {
            let once: Vec<(u64, bool)> = out[first..]
                .iter()
                .filter(|e| e.once)
                .map(|e| (e.id, e.shared.is_some()))
                .collect();
            for (id, shared) in once {
                shared_removed |= self.remove(id) && shared;
            }
        }
        shared_removed
    }

    /// Every handler matching `name`, in registration order.
    fn collect_all(&mut self, name: &str, out: &mut Vec<Arc<Entry>>) {
        let exact = self.exact.get(name).map(Vec::as_slice).unwrap_or(&[]);
        if self.patterns.is_empty() {
            out.extend(exact.iter().cloned());
        } else {
            let found = self.pattern_matches(name);
            let exact = self.exact.get(name).map(Vec::as_slice).unwrap_or(&[]);
            // Merge two id-sorted lists.
            let (mut i, mut j) = (0, 0);
            while i < exact.len() || j < found.len() {
                let take_exact = match (exact.get(i), found.get(j)) {
                    (Some(e), Some(&p)) => e.id < self.patterns[p as usize].0.id,
                    (Some(_), None) => true,
                    _ => false,
                };
                if take_exact {
                    out.push(exact[i].clone());
                    i += 1;
                } else {
                    out.push(self.patterns[found[j] as usize].0.clone());
                    j += 1;
                }
            }
        }
    }

    /// Whether a one-per-service group `key` has a handler that runs here
    /// (all of them with `application`, else those that run in a
    /// supervisor).
    pub(crate) fn has_shared(&self, key: &str, application: bool) -> bool {
        self.exact
            .values()
            .flatten()
            .chain(self.patterns.iter().map(|(e, _)| e))
            .any(|e| e.shared.as_deref() == Some(key) && (application || e.in_supervisor))
    }
}
