//! Compile-time validation of event patterns, with the runtime's syntax
//! (`serve_common::event::EventPattern::parse`).

pub(crate) fn validate(pattern: &str) -> Result<(), String> {
    if let Some(regex) = pattern.strip_prefix("re:") {
        regex_syntax::Parser::new()
            .parse(regex)
            .map_err(|e| format!("invalid regex in event pattern:\n{e}"))?;
        regex_syntax::Parser::new()
            .parse(&format!(r"\A(?:{regex})\z"))
            .map(drop)
            .map_err(|e| {
                format!(
                    "the regex does not compile once anchored (a trailing `(?x)` comment?):\n{e}"
                )
            })
    } else if pattern.contains(['*', '?', '[', '{']) {
        globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map(drop)
            .map_err(|e| format!("invalid glob in event pattern: {e}"))
    } else if pattern.is_empty() {
        Err("the event pattern is empty".to_owned())
    } else {
        Ok(())
    }
}
