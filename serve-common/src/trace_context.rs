//! W3C trace context (`traceparent`, `tracestate`): every request is a
//! span of a trace, continued from the caller's when its headers are
//! valid, and what a handler calls next can continue it. Needs the `actix`
//! feature (on by default).
//!
//! ```no_run
//! use serve_common::trace_context;
//!
//! async fn handler() -> String {
//!     let trace = trace_context::current().expect("inside a request");
//!     // Calling another service: its request continues this trace.
//!     for (name, value) in trace.headers() {
//!         println!("{name}: {value}"); // traceparent: 00-<trace id>-<this span>-01
//!     }
//!     trace.trace_id.to_string()
//! }
//! ```
//!
//! - [`RequestIdMiddleware`](crate::request_id::RequestIdMiddleware) reads
//!   `traceparent` (version `00`, and later versions the way the spec
//!   says: their first four fields) and `tracestate`. A valid one gives
//!   the trace id and the parent span; this request gets a span id of its
//!   own. Two `traceparent` headers count as malformed; several
//!   `tracestate` headers are one list. A missing one starts a new trace; a malformed one too, and it is
//!   counted ([`malformed`], and `serve_common_traceparent_malformed_total`
//!   in `/manage/metrics`) and logged at DEBUG. A `tracestate` is kept
//!   (at most 512 bytes, 32 members) only with a valid `traceparent`.
//! - [`current`] returns the request's context anywhere in its handling
//!   (a tokio task-local, like the request id; [`crate::request_id::carry`]
//!   carries both into spawned tasks).
//! - Log lines of a request show the trace id's first 8 hex digits beside
//!   the request id (`[<request id> 4bf92f35]`); JSON lines carry the whole
//!   `trace_id` and `span_id` as fields of the request's span.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The request header naming the caller's trace and span.
pub const TRACEPARENT: &str = "traceparent";
/// The request header with vendors' trace data.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` kept.
pub const MAX_TRACESTATE: usize = 512;

/// A trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// Lowercase hex in one write (ids are formatted on every request).
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in bytes.iter().take(16).enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    f.write_str(std::str::from_utf8(&out[..2 * bytes.len().min(16)]).expect("ASCII"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl TraceId {
    /// A random trace id.
    pub fn random() -> Self {
        loop {
            let bytes = *uuid::Uuid::new_v4().as_bytes();
            if bytes != [0; 16] {
                return Self(bytes);
            }
        }
    }

    /// The first 8 hex digits, as log lines show it.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

impl SpanId {
    /// A random span id.
    pub fn random() -> Self {
        loop {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[8..]);
            if bytes != [0; 8] {
                return Self(bytes);
            }
        }
    }
}

/// A request's place in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id: the caller's, or a new one.
    pub trace_id: TraceId,
    /// This request's span.
    pub span_id: SpanId,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_span_id: Option<SpanId>,
    /// The trace flags (bit 0: sampled); a new trace is sampled.
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<Arc<str>>,
}

/// What the request's `traceparent` was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// None: a new trace.
    Absent,
    /// Valid: the trace goes on.
    Valid,
    /// Malformed: ignored, a new trace (counted).
    Malformed,
}

static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// How many requests carried a malformed `traceparent` (ignored).
pub fn malformed() -> u64 {
    MALFORMED.load(Ordering::Relaxed)
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// `(trace id, parent span, flags)` of a `traceparent`, if well-formed.
fn parse_traceparent(header: &str) -> Option<(TraceId, SpanId, u8)> {
    let header = header.trim();
    let version = hex::<1>(header.get(..2)?)?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may go on,
    // after a dash.
    if version == 0 && header.len() != 55 {
        return None;
    }
    if header.len() > 55 && header.as_bytes()[55] != b'-' {
        return None;
    }
    let fields = header.get(..55)?;
    let mut parts = fields.split('-');
    let (_, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = hex::<16>(trace)?;
    let parent = hex::<8>(parent)?;
    let flags = hex::<1>(flags)?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(parent), flags))
}

/// A `tracestate` worth passing on: at most [`MAX_TRACESTATE`] bytes and
/// 32 members, printable ASCII.
fn check_tracestate(header: &str) -> Option<Arc<str>> {
    let header = header.trim();
    let ok = !header.is_empty()
        && header.len() <= MAX_TRACESTATE
        && header.split(',').count() <= 32
        && header.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then(|| header.into())
}

impl TraceContext {
    /// A new trace, this span its root (sampled).
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }

    /// The context of a request with these headers (a new trace when
    /// `traceparent` is missing or malformed), and what it was.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> (Self, Incoming) {
        let Some(header) = traceparent else {
            return (Self::new_root(), Incoming::Absent);
        };
        match parse_traceparent(header) {
            Some((trace_id, parent, flags)) => (
                Self {
                    trace_id,
                    span_id: SpanId::random(),
                    parent_span_id: Some(parent),
                    flags,
                    tracestate: tracestate.and_then(check_tracestate),
                },
                Incoming::Valid,
            ),
            None => (Self::new_root(), Incoming::Malformed),
        }
    }

    /// Whether the trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` of a call made from this span (version 00; of
    /// the flags, only `sampled` is passed on, as version 00 asks).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            self.flags & 1
        )
    }

    /// The headers that continue this trace in a call to another service:
    /// `traceparent`, and `tracestate` when the caller sent one.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(TRACEPARENT, self.traceparent())];
        if let Some(state) = &self.tracestate {
            headers.push((TRACESTATE, state.to_string()));
        }
        headers
    }
}

tokio::task_local! {
    pub(crate) static CURRENT: TraceContext;
}

/// The current request's trace context, if this runs for a request.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The context of an incoming request's headers, the malformed ones
/// counted and logged.
pub(crate) fn of_request(headers: &actix_web::http::header::HeaderMap) -> TraceContext {
    // Two `traceparent`s are not one trace: malformed. Several
    // `tracestate`s are one list.
    let mut parents = headers.get_all(TRACEPARENT);
    let parent = match (parents.next(), parents.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one.to_str().unwrap_or("\u{fffd}")),
        (Some(_), Some(_)) => Some("\u{fffd}"),
    };
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = (!states.is_empty()).then(|| states.join(","));
    let (context, incoming) = TraceContext::from_headers(parent, state.as_deref());
    if incoming == Incoming::Malformed {
        MALFORMED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("ignoring a malformed traceparent header: a new trace");
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_continues_the_trace_with_a_new_span() {
        let (context, incoming) =
            TraceContext::from_headers(Some(VALID), Some("congo=t61rcWkgMzE"));
        assert_eq!(incoming, Incoming::Valid);
        assert_eq!(
            context.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            context.parent_span_id.unwrap().to_string(),
            "00f067aa0ba902b7"
        );
        assert_ne!(context.span_id.to_string(), "00f067aa0ba902b7");
        assert!(context.sampled());
        let out = context.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_eq!(
            context.headers()[1],
            (TRACESTATE, "congo=t61rcWkgMzE".to_owned())
        );
        assert_eq!(context.trace_id.short(), "4bf92f35");
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1x",
        ] {
            let (context, incoming) = TraceContext::from_headers(Some(bad), Some("a=b"));
            assert_eq!(incoming, Incoming::Malformed, "{bad}");
            assert_eq!(context.parent_span_id, None);
            assert_eq!(context.tracestate, None, "no tracestate without a parent");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        let (context, incoming) = TraceContext::from_headers(Some(later), None);
        assert_eq!(incoming, Incoming::Valid);
        assert_eq!(context.trace_id.short(), "4bf92f35");
        let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(
            TraceContext::from_headers(Some(glued), None).1,
            Incoming::Malformed
        );
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let state = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE);
        let (context, _) = TraceContext::from_headers(Some(VALID), Some(&state));
        assert_eq!(context.tracestate, None);
    }
}
