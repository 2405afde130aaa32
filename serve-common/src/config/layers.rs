//! The four layers, the stamped entries of the runtime layer, and the
//! walks over TOML tables.
//!
//! Every runtime `set` and `unset` is an entry with a stamp: a hybrid
//! logical clock (nanoseconds of the coarse wall clock, moved past every
//! stamp seen) and a random origin per config. Of two entries for one path
//! the higher stamp wins in every process, whatever order they arrive in;
//! an entry for a table decides the paths beneath it unless they are newer.
//! An edit of the file is an intent too, stamped with the file's
//! modification time: a reload that changes a key replaces a runtime entry
//! for it that is older than the edit.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;

use toml::{Table, Value};

use super::ConfigError;

/// An entry's place in the order of intents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp {
    pub(crate) clock: u64,
    pub(crate) origin: u64,
}

/// The origin of the file's edits: it wins a tie with a runtime set made
/// in the same clock tick (the coarse clock is a few milliseconds wide, and
/// an edit usually comes after the set it overrides).
pub(crate) const FILE_ORIGIN: u64 = u64::MAX;

/// Nanoseconds since the epoch, from the coarse real-time clock: the clock
/// the kernel stamps file modifications with, so a set and an edit compare
/// on one scale.
pub(crate) fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or_default()
}

/// A random origin for a config: process ids repeat across containers and
/// hosts, so they cannot tell two processes apart.
pub(crate) fn random_origin() -> u64 {
    crate::random_u64().clamp(1, FILE_ORIGIN - 1)
}

#[derive(Default, Clone)]
pub(crate) struct Layers {
    pub(crate) defaults: Table,
    pub(crate) file: Table,
    pub(crate) env: Table,
    pub(crate) runtime: Table,
    /// The file's text as last read, for the line of a bad value.
    pub(crate) file_text: Arc<str>,
    /// The hybrid logical clock: past every stamp made or seen here.
    pub(crate) clock: u64,
    /// The winning stamp of every runtime set and unset, by path.
    pub(crate) entries: HashMap<String, Stamp>,
}

impl Layers {
    pub(crate) fn merged(&self) -> Table {
        let mut out = self.defaults.clone();
        for layer in [&self.file, &self.env, &self.runtime] {
            merge_into(&mut out, layer);
        }
        out
    }

    /// A stamp for a change made here, later than any seen.
    pub(crate) fn tick(&mut self, origin: u64) -> Stamp {
        self.clock = now_ns().max(self.clock.saturating_add(1));
        Stamp {
            clock: self.clock,
            origin,
        }
    }

    /// Applies a runtime set (`Some`) or unset (`None`) of `path` under
    /// `stamp`. Returns `false`, changing nothing, when an entry for the
    /// path or for a table above it is newer.
    pub(crate) fn apply(
        &mut self,
        path: &str,
        keys: &[&str],
        value: Option<Value>,
        stamp: Stamp,
    ) -> bool {
        self.clock = self.clock.max(stamp.clock);
        if self.entries.get(path).is_some_and(|s| *s >= stamp) {
            return false;
        }
        for end in 1..keys.len() {
            if self
                .entries
                .get(&keys[..end].join("."))
                .is_some_and(|s| *s > stamp)
            {
                return false;
            }
        }
        // Entries beneath: the older ones give way, the newer ones stay
        // on top of this one.
        let prefix = format!("{path}.");
        let beneath: Vec<(String, Stamp)> = self
            .entries
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        let mut newer = Vec::new();
        for (p, s) in beneath {
            if s > stamp {
                let kept = lookup(&self.runtime, &p).cloned();
                newer.push((p, s, kept));
            } else {
                self.entries.remove(&p);
            }
        }
        set_or_remove(&mut self.runtime, keys, value);
        newer.sort_by_key(|(_, s, _)| *s);
        for (p, _, kept) in newer {
            let keys: Vec<&str> = p.split('.').collect();
            set_or_remove(&mut self.runtime, &keys, kept);
        }
        self.entries.insert(path.to_owned(), stamp);
        true
    }

    /// The stamp that decides the runtime value at `path`: its own entry,
    /// else the nearest table above it with one, and the newest beneath.
    fn intent(&self, path: &str) -> Option<Stamp> {
        let own = self.entries.get(path).copied().or_else(|| {
            let keys: Vec<&str> = path.split('.').collect();
            (1..keys.len())
                .rev()
                .find_map(|end| self.entries.get(&keys[..end].join(".")).copied())
        });
        let prefix = format!("{path}.");
        let beneath = self
            .entries
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .map(|(_, s)| *s)
            .max();
        own.max(beneath)
    }

    /// After the file layer changed from `old_file` in an edit made at
    /// `edited` (ns): every path whose file value changed and that a
    /// runtime entry older than the edit shadows goes back to the file.
    /// Returns those paths. Every process reads the same edit and decides
    /// the same; the removals are entries stamped with the edit, so a
    /// process that learns the runtime sets later learns them too.
    pub(crate) fn file_wins(&mut self, old_file: &Table, edited: u64) -> Vec<String> {
        let edit = Stamp {
            clock: edited,
            origin: FILE_ORIGIN,
        };
        let (old, new) = (leaves(old_file), leaves(&self.file));
        let mut changed: Vec<String> = old
            .keys()
            .chain(new.keys())
            .filter(|path| old.get(*path) != new.get(*path))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        let mut replaced = Vec::new();
        for path in changed {
            let shadowed = lookup(&self.runtime, &path).is_some();
            if !shadowed || self.intent(&path).is_none_or(|s| s >= edit) {
                continue;
            }
            let keys: Vec<&str> = path.split('.').collect();
            if self.apply(&path, &keys, None, edit) {
                replaced.push(path.clone());
            }
        }
        replaced
    }
}

fn set_or_remove(table: &mut Table, keys: &[&str], value: Option<Value>) {
    match value {
        Some(value) => insert_path(table, keys, value),
        None => {
            remove_path(table, keys);
        }
    }
}

pub(crate) fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut keys = path.split('.');
    let mut value = table.get(keys.next()?)?;
    for key in keys {
        value = value.as_table()?.get(key)?;
    }
    Some(value)
}

pub(crate) fn check_tables_on_the_way(
    table: &Table,
    keys: &[&str],
    path: &str,
) -> Result<(), ConfigError> {
    let mut current = table;
    for (i, key) in keys[..keys.len() - 1].iter().enumerate() {
        match current.get(*key) {
            None => return Ok(()),
            Some(Value::Table(t)) => current = t,
            Some(other) => {
                return Err(ConfigError::NotATable {
                    path: path.to_owned(),
                    through: keys[..=i].join("."),
                    found: other.type_str(),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn insert_path(table: &mut Table, keys: &[&str], value: Value) {
    let (last, parents) = keys.split_last().expect("a path has at least one key");
    let mut current = table;
    for key in parents {
        let slot = current
            .entry(key.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        current = slot.as_table_mut().expect("made a table just above");
    }
    current.insert(last.to_string(), value);
}

/// Removes the value at `keys` and the tables it leaves empty; whether
/// there was one. (Recursive per key: paths are at most
/// [`MAX_PATH_DEPTH`](super::MAX_PATH_DEPTH) keys.)
pub(crate) fn remove_path(table: &mut Table, keys: &[&str]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(*last).is_some(),
        [first, rest @ ..] => {
            let Some(Value::Table(inner)) = table.get_mut(*first) else {
                return false;
            };
            let removed = remove_path(inner, rest);
            if removed && inner.is_empty() {
                table.remove(*first);
            }
            removed
        }
    }
}

/// Merges `over` into `base`, tables key by key. (Recursive per level:
/// runtime values nest at most [`MAX_VALUE_DEPTH`](super::MAX_VALUE_DEPTH)
/// levels, and TOML files are bounded by their parser.)
pub(crate) fn merge_into(base: &mut Table, over: &Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table)) => {
                merge_into(base_table, over_table)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Every leaf (a value that is not a table) by its path.
pub(crate) fn leaves(table: &Table) -> BTreeMap<String, &Value> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(String, &Table)> = vec![(String::new(), table)];
    while let Some((prefix, table)) = stack.pop() {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Table(inner) => stack.push((path, inner)),
                other => {
                    out.insert(path, other);
                }
            }
        }
    }
    out
}

/// The file's table and its modification time (ns since the epoch; 0 when
/// the file is missing and `missing_is_empty`).
pub(crate) fn read_file(
    file: &Path,
    missing_is_empty: bool,
) -> Result<(Table, u64, Arc<str>), ConfigError> {
    let io_error = |source| ConfigError::Io {
        file: file.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && missing_is_empty => {
            tracing::warn!(file = %file.display(), "config file not found; starting with an empty config");
            return Ok((Table::new(), 0, Arc::from("")));
        }
        Err(source) => return Err(io_error(source)),
    };
    let modified = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let table = text.parse::<Table>().map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        message: parse_message(&text, &e),
    })?;
    Ok((table, modified, Arc::from(text)))
}

/// The line (from 1) of the key at `path` in a TOML `text`, or of the
/// deepest table on the way to it that the text has.
pub(crate) fn line_of(text: &str, path: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    for key in path.split('.') {
        let Some((name, value)) = table
            .iter()
            .find(|(name, _)| name.get_ref().as_ref() == key)
        else {
            break;
        };
        span = Some(name.span());
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// A parse error as toml words it (the line quoted, a caret under the
/// mistake), unless the line sets a key that looks secret (`token =
/// s3cr3t`, its quotes forgotten): then only where it is.
fn parse_message(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.to_string().trim_end().to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line.split('=').next().unwrap_or_default();
    let key: String = key
        .split('.')
        .map(|k| k.trim().trim_matches(['"', '\'']))
        .collect::<Vec<_>>()
        .join(".");
    if !line.contains('=') || !super::is_secret_path(&key) {
        return error.to_string().trim_end().to_owned();
    }
    let line_number = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    format!(
        "{} at line {line_number}, column {column} (the line is not shown: `{key}` looks secret)",
        error.message().trim_end()
    )
}

pub(crate) fn read_env(prefix: &str) -> Table {
    let prefix = format!("{prefix}__");
    let mut table = Table::new();
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                return None;
            }
            match value.into_string() {
                Ok(value) => Some((name, value)),
                Err(_) => {
                    tracing::warn!(variable = %name, "ignoring a config variable that is not UTF-8");
                    None
                }
            }
        })
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let keys: Vec<String> = name[prefix.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            tracing::warn!(variable = %name, "ignoring a config variable with an empty key");
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // A secret is text, even when it reads as a number.
        let value = if super::is_secret_path(&keys.join(".")) {
            Value::String(raw)
        } else {
            parse_env_value(&raw)
        };
        insert_path(&mut table, &keys, value);
    }
    table
}

pub(crate) fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(clock: u64) -> Stamp {
        Stamp { clock, origin: 1 }
    }

    fn keys(path: &str) -> Vec<&str> {
        path.split('.').collect()
    }

    #[test]
    fn a_parse_error_on_a_secret_line_does_not_quote_it() {
        let text = "[management]\ntoken = s3cr3t-4711\n";
        let error = text.parse::<Table>().unwrap_err();
        let message = parse_message(text, &error);
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        let text = "[server]\nbind = 127.0.0.1\n";
        let error = text.parse::<Table>().unwrap_err();
        let message = parse_message(text, &error);
        assert!(
            message.contains("bind = 127.0.0.1"),
            "the line is shown: {message}"
        );
    }

    #[test]
    fn env_values_read_as_toml_when_they_can() {
        assert_eq!(parse_env_value("8080"), Value::Integer(8080));
        assert_eq!(parse_env_value("true"), Value::Boolean(true));
        assert_eq!(parse_env_value("debug"), Value::String("debug".into()));
        assert_eq!(
            parse_env_value("127.0.0.1:80"),
            Value::String("127.0.0.1:80".into())
        );
    }

    #[test]
    fn merge_is_deep_for_tables_only() {
        let mut base: Table = "[a]\nx = 1\ny = 2\n".parse().unwrap();
        let over: Table = "[a]\ny = 3\n".parse().unwrap();
        merge_into(&mut base, &over);
        assert_eq!(lookup(&base, "a.x"), Some(&Value::Integer(1)));
        assert_eq!(lookup(&base, "a.y"), Some(&Value::Integer(3)));
    }

    #[test]
    fn a_table_set_decides_what_is_beneath_it_unless_newer() {
        let table: Value = toml::from_str::<Table>("b = 1\nc = 1\n").unwrap().into();
        // In stamp order...
        let mut in_order = Layers::default();
        assert!(in_order.apply("a", &keys("a"), Some(table.clone()), stamp(5)));
        assert!(in_order.apply("a.b", &keys("a.b"), Some(Value::Integer(6)), stamp(6)));
        // ...and the other way round: the same result.
        let mut reversed = Layers::default();
        assert!(reversed.apply("a.b", &keys("a.b"), Some(Value::Integer(6)), stamp(6)));
        assert!(reversed.apply("a", &keys("a"), Some(table), stamp(5)));
        for layers in [&in_order, &reversed] {
            assert_eq!(lookup(&layers.runtime, "a.b"), Some(&Value::Integer(6)));
            assert_eq!(lookup(&layers.runtime, "a.c"), Some(&Value::Integer(1)));
        }
        // An older set beneath a newer table set is ignored.
        assert!(!in_order.apply("a.c", &keys("a.c"), Some(Value::Integer(4)), stamp(4)));
        assert_eq!(lookup(&in_order.runtime, "a.c"), Some(&Value::Integer(1)));
        // A newer table set supersedes the older entry beneath it.
        let newer: Value = toml::from_str::<Table>("b = 7\n").unwrap().into();
        assert!(in_order.apply("a", &keys("a"), Some(newer), stamp(7)));
        assert_eq!(lookup(&in_order.runtime, "a.b"), Some(&Value::Integer(7)));
        assert!(!in_order.entries.contains_key("a.b"));
    }

    #[test]
    fn an_edit_replaces_older_runtime_values_of_the_keys_it_changed_only() {
        let mut layers = Layers {
            file: "level = \"INFO\"\nother = 1\n".parse().unwrap(),
            ..Layers::default()
        };
        layers.apply("level", &keys("level"), Some("DEBUG".into()), stamp(10));
        layers.apply("other", &keys("other"), Some(Value::Integer(5)), stamp(10));
        let old = std::mem::replace(
            &mut layers.file,
            "level = \"ERROR\"\nother = 1\n".parse().unwrap(),
        );
        assert_eq!(layers.file_wins(&old, 20), ["level"]);
        assert_eq!(
            lookup(&layers.merged(), "level"),
            Some(&Value::from("ERROR"))
        );
        assert_eq!(lookup(&layers.merged(), "other"), Some(&Value::Integer(5)));
        // A set after the edit survives the next edit of that key if that
        // edit is older than it (it is not: it comes later here).
        layers.apply("level", &keys("level"), Some("WARN".into()), stamp(30));
        let old = std::mem::replace(
            &mut layers.file,
            "level = \"TRACE\"\nother = 1\n".parse().unwrap(),
        );
        assert!(layers.file_wins(&old, 25).is_empty());
        assert_eq!(
            lookup(&layers.merged(), "level"),
            Some(&Value::from("WARN"))
        );
    }

    #[test]
    fn leaves_of_a_deep_table_are_walked_without_recursion() {
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("[{}]\nv = {i}\n", vec!["t"; i + 1].join(".")));
        }
        let table: Table = text.parse().unwrap();
        assert_eq!(leaves(&table).len(), 30);
    }
}
