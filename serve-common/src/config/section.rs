//! Typed sections: a part of the config that the application reads as a
//! type, guarded on every change, read through a cheap handle.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::layers::{lookup, Layers};
use super::ConfigError;

pub(crate) type Validate<T> = Box<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// The keys a section's type reads below `parent` (`""` for its top
/// level, `"cors"` for `server.cors`): what an unknown key is compared
/// with. [`fields_of`] lists a struct's.
pub(crate) type Known = fn(&str) -> &'static [&'static str];

/// The fields of the struct `T` deserializes as.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

struct Cell<T> {
    path: String,
    value: ArcSwap<T>,
    validate: Option<Validate<T>>,
    /// Set for serve-common's own sections: unknown keys are warned about.
    known: Option<Known>,
    /// The unknown keys warned about already (each once while it stays).
    warned: parking_lot::Mutex<Vec<String>>,
}

/// Where the values come from, for the errors that name them.
pub(crate) struct Sources<'a> {
    pub(crate) layers: &'a Layers,
    pub(crate) file: Option<&'a Path>,
    pub(crate) env_prefix: Option<&'a str>,
}

impl Sources<'_> {
    /// Which layer gives the value at `path` (or at the longest prefix of
    /// it that has one).
    pub(crate) fn describe(&self, path: &str) -> String {
        let keys: Vec<&str> = path.split('.').collect();
        for end in (1..=keys.len()).rev() {
            let at = keys[..end].join(".");
            let layers = self.layers;
            if lookup(&layers.runtime, &at).is_some() {
                return "a value set at run time".to_owned();
            }
            if lookup(&layers.env, &at).is_some() {
                let prefix = self.env_prefix.unwrap_or(super::DEFAULT_ENV_PREFIX);
                return format!(
                    "environment variable {prefix}__{}",
                    at.replace('.', "__").to_uppercase()
                );
            }
            if lookup(&layers.file, &at).is_some() {
                let line = super::layers::line_of(&layers.file_text, path)
                    .map(|line| format!(":{line}"))
                    .unwrap_or_default();
                return match self.file {
                    Some(file) => format!("{}{line}", file.display()),
                    None => format!("the file{line}"),
                };
            }
            if lookup(&layers.defaults, &at).is_some() {
                return "the defaults".to_owned();
            }
        }
        "no layer: it is missing".to_owned()
    }
}

/// A registered section, type erased: checked before every change is
/// applied, stored after.
pub(crate) trait Slot: Send + Sync {
    /// The section's value in `merged`, or why it is invalid.
    fn check(
        &self,
        merged: &Table,
        sources: &Sources<'_>,
    ) -> Result<Box<dyn Any + Send>, ConfigError>;
    /// Stores what `check` returned (and says what it found unknown).
    fn store(&self, value: Box<dyn Any + Send>);
    /// Warns again about unknown keys still there (a fresh start).
    fn forget_warnings(&self);
}

/// The keys of an ignored value's path (options and newtypes are no key).
fn keys_of(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            keys_of(parent, out);
            out.push(index.to_string());
        }
        Path::Map { parent, key } => {
            keys_of(parent, out);
            out.push(key.clone());
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => {
            keys_of(parent, out);
        }
    }
}

/// The known key closest to `key` if it is close enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The value at `path` in `merged` as a `T`, validated; with `known`, the
/// keys of the section that `T` does not read too (`a.b`, below `path`).
fn parse<T: DeserializeOwned>(
    path: &str,
    validate: Option<&Validate<T>>,
    known: Option<Known>,
    merged: &Table,
    sources: &Sources<'_>,
) -> Result<(T, Vec<Vec<String>>), ConfigError> {
    // A missing section reads as an empty table: a type whose fields all
    // have defaults is valid without one.
    let value = if path.is_empty() {
        Value::Table(merged.clone())
    } else {
        lookup(merged, path)
            .cloned()
            .unwrap_or_else(|| Value::Table(Table::new()))
    };
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = if known.is_some() {
        let mut note = |ignored: serde_ignored::Path<'_>| {
            let mut keys = Vec::new();
            keys_of(&ignored, &mut keys);
            unknown.push(keys);
        };
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note))
    } else {
        serde_path_to_error::deserialize(value)
    };
    let parsed: T = parsed.map_err(|error| {
        let inner = error.path().to_string();
        let key = if inner.is_empty() || inner == "." {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::Invalid {
            origin: sources.describe(&key),
            path: key,
            message: error.into_inner().to_string(),
        }
    })?;
    if let Some(validate) = validate {
        validate(&parsed).map_err(|message| ConfigError::Invalid {
            origin: sources.describe(path),
            path: path.to_owned(),
            message,
        })?;
    }
    Ok((parsed, unknown))
}

/// An unknown key (its full path) and the WARN line about it, unless it
/// was warned about already.
type Unknown = (String, Option<String>);

/// `path` and the `keys` below it, dotted.
fn dotted<'a>(path: &'a str, keys: impl IntoIterator<Item = &'a str>) -> String {
    std::iter::once(path)
        .chain(keys)
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// What to say about each key of `unknown` not in `warned` (naming the
/// closest known key): the origin is looked up only for those, so a
/// change checked while an old unknown key stays costs no file parse.
fn describe_unknown(
    path: &str,
    known: Known,
    unknown: Vec<Vec<String>>,
    warned: &[String],
    sources: &Sources<'_>,
) -> Vec<Unknown> {
    let mut out = Vec::with_capacity(unknown.len());
    for keys in unknown {
        let Some((key, parents)) = keys.split_last() else {
            continue;
        };
        let full = dotted(path, keys.iter().map(String::as_str));
        if warned.contains(&full) {
            out.push((full, None));
            continue;
        }
        let origin = sources.describe(&full);
        let line = match closest(key, known(&parents.join("."))) {
            Some(near) => {
                let near = dotted(path, parents.iter().map(String::as_str).chain([near]));
                format!("unknown config key `{full}` (from {origin}), ignored: did you mean `{near}`?")
            }
            None => format!(
                "unknown config key `{full}` (from {origin}), ignored: serve-common does not read it"
            ),
        };
        out.push((full, Some(line)));
    }
    out
}

/// Once the config that has them is applied: a WARN line for each
/// unknown key not warned about yet; forgets the ones that are gone.
fn warn_unknown(unknown: Vec<Unknown>, warned: &parking_lot::Mutex<Vec<String>>) {
    // A worker's supervisor reads the same file and says it: one line for
    // the service, not one per process.
    let worker = crate::identity::role() == crate::identity::Role::Worker;
    let mut warned = warned.lock();
    let mut now = Vec::with_capacity(unknown.len());
    for (key, line) in unknown {
        if let (Some(line), false) = (line, worker || warned.contains(&key)) {
            tracing::warn!(%key, "{line}");
        }
        now.push(key);
    }
    *warned = now;
}

impl<T: DeserializeOwned + Send + Sync + 'static> Slot for Cell<T> {
    fn check(
        &self,
        merged: &Table,
        sources: &Sources<'_>,
    ) -> Result<Box<dyn Any + Send>, ConfigError> {
        let (value, unknown) = parse(
            &self.path,
            self.validate.as_ref(),
            self.known,
            merged,
            sources,
        )?;
        let unknown = match self.known {
            Some(known) => {
                let warned = self.warned.lock();
                describe_unknown(&self.path, known, unknown, &warned, sources)
            }
            None => Vec::new(),
        };
        Ok(Box::new((value, unknown)))
    }

    fn store(&self, value: Box<dyn Any + Send>) {
        if let Ok(value) = value.downcast::<(T, Vec<Unknown>)>() {
            let (value, unknown) = *value;
            self.value.store(Arc::new(value));
            if self.known.is_some() {
                warn_unknown(unknown, &self.warned);
            }
        }
    }

    fn forget_warnings(&self) {
        self.warned.lock().clear();
    }
}

/// A part of the config read as a `T`, from [`Config::section`](super::Config::section):
/// it follows every reload and runtime set, and no change that would not
/// read as a `T` (or that its validation refuses) is applied.
///
/// [`read`](Self::read) costs about what a field read behind an `ArcSwap`
/// costs. Cloning gives another handle to the same section.
pub struct Section<T> {
    cell: Arc<Cell<T>>,
}

impl<T> Clone for Section<T> {
    fn clone(&self) -> Self {
        Self {
            cell: self.cell.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Section<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section")
            .field("path", &self.cell.path)
            .field("value", &**self.cell.value.load())
            .finish()
    }
}

impl<T> Section<T> {
    /// The section's path.
    pub fn path(&self) -> &str {
        &self.cell.path
    }

    /// The current value, for a short read (do not hold it across a long
    /// wait: it keeps this version alive).
    pub fn read(&self) -> SectionRef<T> {
        SectionRef {
            guard: self.cell.value.load(),
            _type: PhantomData,
        }
    }

    /// The current value, to keep.
    pub fn get(&self) -> Arc<T> {
        self.cell.value.load_full()
    }
}

/// A read of a [`Section`]: derefs to the value.
pub struct SectionRef<T> {
    guard: arc_swap::Guard<Arc<T>>,
    _type: PhantomData<T>,
}

impl<T> std::ops::Deref for SectionRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

/// A new section at `path`, checked against `merged` now.
pub(crate) fn register<T: DeserializeOwned + Send + Sync + 'static>(
    path: &str,
    validate: Option<Validate<T>>,
    known: Option<Known>,
    merged: &Table,
    sources: &Sources<'_>,
) -> Result<(Section<T>, Arc<dyn Slot>), ConfigError> {
    let (value, unknown) = parse(path, validate.as_ref(), known, merged, sources)?;
    let warned = parking_lot::Mutex::new(Vec::new());
    if let Some(known) = known {
        warn_unknown(
            describe_unknown(path, known, unknown, &[], sources),
            &warned,
        );
    }
    let cell = Arc::new(Cell {
        path: path.to_owned(),
        value: ArcSwap::from_pointee(value),
        validate,
        known,
        warned,
    });
    Ok((Section { cell: cell.clone() }, cell))
}
