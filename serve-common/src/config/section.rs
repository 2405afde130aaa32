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

struct Cell<T> {
    path: String,
    value: ArcSwap<T>,
    validate: Option<Validate<T>>,
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
    fn describe(&self, path: &str) -> String {
        let keys: Vec<&str> = path.split('.').collect();
        for end in (1..=keys.len()).rev() {
            let at = keys[..end].join(".");
            let layers = self.layers;
            if lookup(&layers.runtime, &at).is_some() {
                return "a runtime set".to_owned();
            }
            if lookup(&layers.env, &at).is_some() {
                let prefix = self.env_prefix.unwrap_or(super::DEFAULT_ENV_PREFIX);
                return format!(
                    "environment variable {prefix}__{}",
                    at.replace('.', "__").to_uppercase()
                );
            }
            if lookup(&layers.file, &at).is_some() {
                return match self.file {
                    Some(file) => format!("file {}", file.display()),
                    None => "the file".to_owned(),
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
    /// Stores what `check` returned.
    fn store(&self, value: Box<dyn Any + Send>);
}

/// The value at `path` in `merged` as a `T`, validated.
fn parse<T: DeserializeOwned>(
    path: &str,
    validate: Option<&Validate<T>>,
    merged: &Table,
    sources: &Sources<'_>,
) -> Result<T, ConfigError> {
    // A missing section reads as an empty table: a type whose fields all
    // have defaults is valid without one.
    let value = if path.is_empty() {
        Value::Table(merged.clone())
    } else {
        lookup(merged, path)
            .cloned()
            .unwrap_or_else(|| Value::Table(Table::new()))
    };
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|error| {
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
    Ok(parsed)
}

impl<T: DeserializeOwned + Send + Sync + 'static> Slot for Cell<T> {
    fn check(
        &self,
        merged: &Table,
        sources: &Sources<'_>,
    ) -> Result<Box<dyn Any + Send>, ConfigError> {
        Ok(Box::new(parse(
            &self.path,
            self.validate.as_ref(),
            merged,
            sources,
        )?))
    }

    fn store(&self, value: Box<dyn Any + Send>) {
        if let Ok(value) = value.downcast::<T>() {
            self.value.store(Arc::new(*value));
        }
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
    merged: &Table,
    sources: &Sources<'_>,
) -> Result<(Section<T>, Arc<dyn Slot>), ConfigError> {
    let value = parse(path, validate.as_ref(), merged, sources)?;
    let cell = Arc::new(Cell {
        path: path.to_owned(),
        value: ArcSwap::from_pointee(value),
        validate,
    });
    Ok((Section { cell: cell.clone() }, cell))
}
