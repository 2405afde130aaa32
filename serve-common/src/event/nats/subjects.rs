//! Event names as NATS subjects, and the subscriptions (or consumer
//! filters) that cover what this process's handlers can match.

use std::collections::BTreeSet;

use crate::event::registry::Interest;

/// Whether `prefix` is a valid literal subject.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':')
        })
}

/// One `.`-separated part of an event name as a subject token.
pub(crate) fn escape_token(token: &str) -> String {
    if token.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(token.len());
    for c in token.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':' {
            out.push(c);
        } else {
            let mut buffer = [0; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// The subject an event named `name` travels on.
pub(crate) fn subject_for(prefix: &str, name: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + name.len() + 8);
    subject.push_str(prefix);
    for token in name.split('.') {
        subject.push('.');
        subject.push_str(&escape_token(token));
    }
    subject
}

/// The subscriptions that cover `interest`, with no overlap.
pub(crate) fn subjects(prefix: &str, interest: &Interest) -> BTreeSet<String> {
    let everything = format!("{prefix}.>");
    // Literal prefixes as whole tokens: `job.` and `job.x` both give
    // `job` (the part after the last `.` is incomplete).
    let mut wildcards: BTreeSet<Vec<String>> = BTreeSet::new();
    for literal in &interest.prefixes {
        let mut tokens: Vec<&str> = literal.split('.').collect();
        tokens.pop();
        if tokens.is_empty() {
            return BTreeSet::from([everything]);
        }
        wildcards.insert(tokens.into_iter().map(escape_token).collect());
    }
    // Drop a wildcard that a shorter one covers.
    let all: Vec<Vec<String>> = wildcards.iter().cloned().collect();
    wildcards.retain(|w| !all.iter().any(|o| o.len() < w.len() && w.starts_with(o)));
    let mut out = BTreeSet::new();
    for tokens in &wildcards {
        out.insert(format!("{prefix}.{}.>", tokens.join(".")));
    }
    for name in &interest.exact {
        let tokens: Vec<String> = name.split('.').map(escape_token).collect();
        let covered = wildcards
            .iter()
            .any(|w| w.len() < tokens.len() && tokens.starts_with(w));
        if !covered {
            out.insert(format!("{prefix}.{}", tokens.join(".")));
        }
    }
    out
}

/// Whether `subject` is the subject the event `name` travels on
/// ([`subject_for`]), without building it.
pub(crate) fn is_subject_of(prefix: &str, name: &str, subject: &str) -> bool {
    let Some(rest) = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    if rest == name && is_plain_name(name) {
        // Every part is its own token: the common case, without a split.
        return true;
    }
    let mut tokens = rest.split('.');
    for part in name.split('.') {
        match tokens.next() {
            Some(token) if token_is(part, token) => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Whether every dot-separated part of `name` is non-empty and needs no
/// escape (so the subject is the prefix, a dot and the name).
fn is_plain_name(name: &str) -> bool {
    let mut previous = b'.';
    for &b in name.as_bytes() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':');
        if !(plain || (b == b'.' && previous != b'.')) {
            return false;
        }
        previous = b;
    }
    previous != b'.'
}

/// Whether `token` is [`escape_token`]`(part)`.
fn token_is(part: &str, token: &str) -> bool {
    if part.is_empty() {
        return token == "%";
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':';
    if part.chars().all(plain) {
        part == token
    } else {
        escape_token(part) == token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(exact: &[&str], prefixes: &[&str]) -> Interest {
        Interest {
            exact: exact.iter().map(|s| (*s).into()).collect(),
            prefixes: prefixes.iter().map(|s| (*s).into()).collect(),
        }
    }

    #[test]
    fn names_map_to_escaped_subjects() {
        assert_eq!(subject_for("p", "cache.flush"), "p.cache.flush");
        assert_eq!(
            subject_for("p", "config:logging.level"),
            "p.config:logging.level"
        );
        assert_eq!(subject_for("p", "a b.*.>"), "p.a%20b.%2A.%3E");
        assert_eq!(subject_for("p", "a..b"), "p.a.%.b");
        assert_eq!(subject_for("p", "."), "p.%.%");
        assert_eq!(subject_for("p", "50%"), "p.50%25");
        assert_eq!(subject_for("p", "é"), "p.%C3%A9");
    }

    #[test]
    fn subscriptions_cover_the_registrations_without_overlap() {
        let got = subjects(
            "p",
            &interest(&["a.b", "x", "job.7.done"], &["job.", "job.x", "q.r.s"]),
        );
        let want: BTreeSet<String> = ["p.a.b", "p.x", "p.job.>", "p.q.r.>"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
        // A pattern with no complete literal token: everything.
        let got = subjects("p", &interest(&["a.b"], &["config:"]));
        assert_eq!(got, BTreeSet::from(["p.>".to_owned()]));
        assert_eq!(subjects("p", &interest(&[], &[])), BTreeSet::new());
    }

    #[test]
    fn subjects_are_checked_against_names() {
        for name in [
            "cache.flush",
            "a..b",
            ".",
            "50%",
            "é",
            "a b.*.>",
            "config:x",
        ] {
            assert!(
                is_subject_of("p.q", name, &subject_for("p.q", name)),
                "{name}"
            );
        }
        assert!(!is_subject_of("p", "a.b", "p.a"));
        assert!(!is_subject_of("p", "a", "p.a.b"));
        assert!(!is_subject_of("p", "a", "q.a"));
        assert!(!is_subject_of("p", "a", "pa"));
        assert!(!is_subject_of("p", "a%", "p.a%"));
    }
}
