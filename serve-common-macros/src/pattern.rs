//! Compile-time validation of event patterns, with the runtime's syntax
//! (`serve_common::event::EventPattern::parse`) and the same engine and
//! limits: the `regex` crate, compiled as the runtime compiles it, so a
//! pattern that passes here cannot fail at run time (where its handler
//! would be left out with a log line).

pub(crate) fn validate(pattern: &str) -> Result<(), String> {
    if let Some(regex) = pattern.strip_prefix("re:") {
        regex::bytes::Regex::new(regex)
            .map_err(|e| format!("invalid regex in event pattern:\n{e}"))?;
        regex::bytes::Regex::new(&format!(r"\A(?:{regex})\z"))
            .map(drop)
            .map_err(|e| {
                format!(
                    "the regex does not compile once anchored (a trailing `(?x)` comment?):\n{e}"
                )
            })
    } else if pattern.contains(['*', '?', '[', '{']) {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("invalid glob in event pattern: {e}"))?;
        let re = glob.regex();
        let body = re
            .strip_prefix("(?-u)^")
            .and_then(|r| r.strip_suffix('$'))
            .unwrap_or(re);
        regex::bytes::Regex::new(&format!(r"(?-u)\A(?:{body})\z"))
            .map(drop)
            .map_err(|e| format!("the glob in this event pattern is too large to match: {e}"))
    } else if pattern.is_empty() {
        Err("the event pattern is empty".to_owned())
    } else {
        Ok(())
    }
}
