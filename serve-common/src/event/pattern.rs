use std::fmt;

/// What a registration matches: an exact event name, a glob or a regex.
///
/// A plain string is read by [`EventPattern::parse`]:
///
/// | string | meaning |
/// |---|---|
/// | `re:<regex>` | a regex that must match the **whole** name (the original's `re.fullmatch`) |
/// | contains `*`, `?`, `[` or `{` | a glob: `*` any run of characters (dots and colons included), `?` one character, `[a-z]` a class, `{a,b}` alternatives, `\` escapes |
/// | anything else | the exact name |
///
/// Use [`EventPattern::exact`] for a name that would otherwise read as a glob
/// or a regex.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventPattern {
    /// Matches this name only.
    Exact(String),
    /// A glob over the whole name.
    Glob(String),
    /// A regex that must match the whole name.
    Regex(String),
}

/// A pattern that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid event pattern `{pattern}`: {message}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

impl EventPattern {
    /// Reads a plain string (see the table above).
    pub fn parse(s: &str) -> Self {
        if let Some(re) = s.strip_prefix("re:") {
            Self::Regex(re.to_owned())
        } else if s.contains(['*', '?', '[', '{']) {
            Self::Glob(s.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    /// An exact name, taken literally.
    pub fn exact(name: impl Into<String>) -> Self {
        Self::Exact(name.into())
    }

    /// A glob.
    pub fn glob(glob: impl Into<String>) -> Self {
        Self::Glob(glob.into())
    }

    /// A regex matched against the whole name.
    pub fn regex(regex: impl Into<String>) -> Self {
        Self::Regex(regex.into())
    }

    /// The source text, without the `re:` prefix.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Exact(s) | Self::Glob(s) | Self::Regex(s) => s,
        }
    }

    /// Whether `name` matches. This compiles the pattern on every call;
    /// the bus compiles its registrations once into a set.
    pub fn matches(&self, name: &str) -> Result<bool, PatternError> {
        match self {
            Self::Exact(s) => Ok(s == name),
            _ => Ok(regex::bytes::Regex::new(&self.anchored_regex()?)
                .map_err(|e| self.error(e))?
                .is_match(name.as_bytes())),
        }
    }

    /// The regex (anchored at both ends) that a glob or regex stands for.
    pub(crate) fn anchored_regex(&self) -> Result<String, PatternError> {
        match self {
            Self::Exact(s) => Ok(format!(r"\A{}\z", regex::escape(s))),
            Self::Regex(re) => {
                // Validate on its own so an error names this pattern, then
                // anchored: an `(?x)` comment at the end would swallow the
                // closing anchor.
                regex::bytes::Regex::new(re).map_err(|e| self.error(e))?;
                let anchored = format!(r"\A(?:{re})\z");
                regex::bytes::Regex::new(&anchored).map_err(|e| {
                    self.error(format_args!(
                        "it does not compile once anchored (a trailing `(?x)` comment?): {e}"
                    ))
                })?;
                Ok(anchored)
            }
            Self::Glob(glob) => {
                let glob = globset::GlobBuilder::new(glob)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| self.error(e))?;
                // globset's regex is `(?-u)^...$`: make the anchors absolute.
                let re = glob.regex();
                let body = re
                    .strip_prefix("(?-u)^")
                    .and_then(|r| r.strip_suffix('$'))
                    .unwrap_or(re);
                Ok(format!(r"(?-u)\A(?:{body})\z"))
            }
        }
    }

    /// A prefix every name this pattern matches starts with: the name of
    /// an exact pattern, a glob's text up to its first wildcard, nothing
    /// for a regex.
    pub(crate) fn literal_prefix(&self) -> String {
        match self {
            Self::Exact(name) => name.clone(),
            Self::Regex(_) => String::new(),
            Self::Glob(glob) => {
                let mut prefix = String::new();
                let mut chars = glob.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '*' | '?' | '[' | '{' => break,
                        '\\' => match chars.next() {
                            Some(escaped) => prefix.push(escaped),
                            None => break,
                        },
                        other => prefix.push(other),
                    }
                }
                prefix
            }
        }
    }

    fn error(&self, e: impl fmt::Display) -> PatternError {
        PatternError {
            pattern: self.to_string(),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Regex(re) => write!(f, "re:{re}"),
            Self::Exact(s) | Self::Glob(s) => f.write_str(s),
        }
    }
}

impl From<&str> for EventPattern {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<String> for EventPattern {
    fn from(s: String) -> Self {
        Self::parse(&s)
    }
}

impl From<&String> for EventPattern {
    fn from(s: &String) -> Self {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::EventPattern;

    #[test]
    fn plain_strings_are_read_by_their_shape() {
        assert_eq!(EventPattern::parse("a.b"), EventPattern::exact("a.b"));
        assert_eq!(
            EventPattern::parse("config:*"),
            EventPattern::glob("config:*")
        );
        assert_eq!(EventPattern::parse("re:a|b"), EventPattern::regex("a|b"));
    }

    #[test]
    fn globs_and_regexes_match_the_whole_name() {
        let glob = EventPattern::parse("config:*");
        assert!(glob.matches("config:logging.level").unwrap());
        assert!(!glob.matches("xconfig:a").unwrap());
        let re = EventPattern::parse("re:job\\.\\d+");
        assert!(re.matches("job.12").unwrap());
        assert!(!re.matches("job.12.done").unwrap());
        assert!(!re.matches("a.job.12").unwrap());
        let alt = EventPattern::parse("re:a|b");
        assert!(
            !alt.matches("ab").unwrap(),
            "alternation is anchored as a whole"
        );
    }

    #[test]
    fn bad_patterns_are_errors_naming_the_pattern() {
        let err = EventPattern::parse("re:(").matches("x").unwrap_err();
        assert!(err.to_string().contains("re:("), "{err}");
        assert!(EventPattern::parse("a[").matches("x").is_err());
        // Valid alone, but its comment would swallow the closing anchor.
        let err = EventPattern::parse("re:(?x)a # note")
            .anchored_regex()
            .unwrap_err();
        assert!(err.to_string().contains("anchored"), "{err}");
    }
}
