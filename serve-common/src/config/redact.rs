//! What config log lines show of values: secrets redacted.

use toml::Value;

/// Whether a key path names a secret: any key containing `password`,
/// `passwd`, `secret`, `token` or `credential`, or ending in `key`.
pub fn is_secret_path(path: &str) -> bool {
    path.split('.').any(|key| {
        let key = key.to_ascii_lowercase();
        ["password", "passwd", "secret", "token", "credential"]
            .iter()
            .any(|word| key.contains(word))
            || key.ends_with("key")
            || key.split(['_', '-']).any(|word| word == "key")
    })
}

const REDACTED: &str = "<redacted>";

fn redact(path: &str, value: &Value) -> Value {
    if is_secret_path(path) {
        return Value::String(REDACTED.into());
    }
    match value {
        Value::Table(table) => Value::Table(
            table
                .iter()
                .map(|(k, v)| (k.clone(), redact(&format!("{path}.{k}"), v)))
                .collect(),
        ),
        // Credentials inside a URL (`nats://user:pass@host`).
        Value::String(text) if text.contains("://") && text.contains('@') => {
            Value::String(redact_url_userinfo(text))
        }
        other => other.clone(),
    }
}

/// `scheme://user:pass@host` -> `scheme://<redacted>@host`, for each
/// comma-separated URL: what logs may show of a URL with credentials.
pub fn redact_url_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{REDACTED}@{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A value as a log line shows it.
pub(crate) fn shown(path: &str, value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_owned(),
        Some(value) => redact(path, value).to_string(),
    }
}

pub(crate) fn log_change(path: &str, old: Option<&Value>, new: Option<&Value>) {
    tracing::info!(%path, old = %shown(path, old), new = %shown(path, new), "config changed");
}

/// A secret config value (a token, a password): read like a `String`,
/// never shown. Its `Debug` prints `<redacted>`, and a value of the wrong
/// type is refused with an error that does not echo it.
///
/// ```
/// use serve_common::config::Secret;
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Api {
///     token: Secret,
/// }
/// let api: Api = toml::from_str("token = \"s3cr3t\"").unwrap();
/// assert_eq!(api.token.expose(), "s3cr3t");
/// assert!(!format!("{api:?}").contains("s3cr3t"));
/// // As the config reads its sections: from the parsed values.
/// let parsed: toml::Value = toml::from_str("token = 12345").unwrap();
/// let error = parsed.try_into::<Api>().unwrap_err().to_string();
/// assert!(!error.contains("12345"), "{error}");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself: do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Read anything, then refuse what is not a string without the
        // deserializer's "invalid type: integer `12345`" (the value).
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => Ok(Self(text)),
            Raw::Other(_) => Err(serde::de::Error::custom(
                "a secret must be a string (its value is not shown)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_redacted_deeply() {
        assert!(is_secret_path("db.password"));
        assert!(is_secret_path("api_key"));
        assert!(is_secret_path("auth.Token"));
        assert!(!is_secret_path("logging.level"));
        let table: toml::Table = "user = \"u\"\npassword = \"p\"\n".parse().unwrap();
        let shown = shown("db", Some(&Value::Table(table)));
        assert!(
            shown.contains("<redacted>") && !shown.contains("\"p\""),
            "{shown}"
        );
        assert_eq!(
            redact_url_userinfo("nats://u:p@h:4222,nats://h2"),
            "nats://<redacted>@h:4222,nats://h2"
        );
    }
}
