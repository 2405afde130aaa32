//! Config paths: dot-separated keys, with limits that keep every walk over
//! them (and over the values set at them) shallow.

use toml::Value;

use super::ConfigError;

/// The most keys a path may have.
pub const MAX_PATH_DEPTH: usize = 32;
/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// The longest path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// The deepest a value set at run time may nest (tables and arrays),
/// counting the keys of its path.
pub const MAX_VALUE_DEPTH: usize = 64;

/// The keys of `path`, checked: at most [`MAX_PATH_LEN`] bytes, none
/// empty, at most [`MAX_PATH_DEPTH`] of them, each at most
/// [`MAX_KEY_LEN`] bytes.
pub(crate) fn split_path(path: &str) -> Result<Vec<&str>, ConfigError> {
    let bad = |reason: String| ConfigError::BadPath {
        path: shorten(path),
        reason,
    };
    if path.len() > MAX_PATH_LEN {
        return Err(bad(format!(
            "{} bytes, longer than the {MAX_PATH_LEN} a path may have",
            path.len()
        )));
    }
    // Counted before splitting: a hostile path costs no allocation.
    let depth = path.bytes().filter(|b| *b == b'.').count() + 1;
    if depth > MAX_PATH_DEPTH {
        return Err(bad(format!(
            "{depth} keys, more than the {MAX_PATH_DEPTH} a path may have"
        )));
    }
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(bad("empty key".to_owned()));
    }
    if let Some(long) = keys.iter().find(|k| k.len() > MAX_KEY_LEN) {
        return Err(bad(format!(
            "a key of {} bytes, longer than {MAX_KEY_LEN}",
            long.len()
        )));
    }
    Ok(keys)
}

/// Checks that `value`, set at a path of `keys` keys, nests no deeper
/// than [`MAX_VALUE_DEPTH`] in all (iteratively: a hostile value cannot
/// overflow the stack here).
pub(crate) fn check_value_depth(path: &str, keys: usize, value: &Value) -> Result<(), ConfigError> {
    let mut stack = vec![(value, keys)];
    while let Some((value, depth)) = stack.pop() {
        if depth > MAX_VALUE_DEPTH {
            return Err(ConfigError::Value {
                path: shorten(path),
                message: format!("nests deeper than {MAX_VALUE_DEPTH} levels"),
            });
        }
        match value {
            Value::Table(table) => stack.extend(table.values().map(|v| (v, depth + 1))),
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// A path fit for an error message or a log line: at most 200 bytes.
pub(crate) fn shorten(path: &str) -> String {
    const LIMIT: usize = 200;
    if path.len() <= LIMIT {
        return path.to_owned();
    }
    let mut end = LIMIT;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &path[..end], path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_bounded() {
        assert_eq!(split_path("a.b.c").unwrap(), ["a", "b", "c"]);
        assert!(split_path("a..b").is_err());
        let deep = vec!["k"; MAX_PATH_DEPTH + 1].join(".");
        let error = split_path(&deep).unwrap_err().to_string();
        assert!(error.contains("33 keys"), "{error}");
        assert!(split_path(&"x".repeat(MAX_KEY_LEN + 1)).is_err());
        let hostile = vec!["k"; 10_000].join(".");
        let error = split_path(&hostile).unwrap_err().to_string();
        assert!(
            error.len() < 400 && error.contains("19999 bytes"),
            "{error}"
        );
    }

    #[test]
    fn values_are_bounded_without_recursion() {
        let mut value = Value::Integer(1);
        for _ in 0..1_000 {
            let mut table = toml::Table::new();
            table.insert("a".into(), value);
            value = Value::Table(table);
        }
        assert!(check_value_depth("x", 1, &value).is_err());
        assert!(check_value_depth("x", 1, &Value::Integer(1)).is_ok());
    }
}
