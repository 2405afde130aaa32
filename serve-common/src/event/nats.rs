//! Events across machines, over NATS (feature `nats`).
//!
//! [`EventBus::enable_nats`] connects the bus to a NATS server (or
//! cluster). Every process of the service connects itself: an event
//! notified in any process, on any host, runs each matching handler once
//! in every process, because each process publishes what it notifies
//! (not local-only events) and receives what the others publish (the
//! connection asks the server not to echo its own messages back; the
//! notifier's own handlers run locally). With NATS on, IPC does not carry
//! events (`#[serve_common::main]` picks one): a process has one link.
//!
//! ## Subjects
//!
//! An event named `a.b.c` travels on the subject `<prefix>.a.b.c`, the
//! prefix being [`NatsOptions::subject_prefix`] (config
//! `events.nats.subject_prefix`, default `serve-common.<crate name>`): one
//! prefix per service. Each `.`-separated part of the name is a subject
//! token; in a token, characters other than ASCII letters, digits, `-`,
//! `_` and `:` are escaped as `%XX` (their UTF-8 bytes; so `%` itself is
//! `%25`, a space `%20`, `*` `%2A`, `>` `%3E`), and an empty part (as in
//! `a..b`) is the token `%`. The message carries the name itself too.
//!
//! Subscriptions follow the registrations: an exact name subscribes to its
//! subject; a glob subscribes to the tokens before its first wildcard
//! (`job.*.done` -> `<prefix>.job.>`); a glob that starts with a wildcard
//! and a regex fall back to `<prefix>.>`. The bus still matches each
//! event against the handlers, so these are filters that can only let
//! more through, never less.
//!
//! ## Faults
//!
//! - [`CONNECTED_EVENT`], [`DISCONNECTED_EVENT`] and [`ERROR_EVENT`]
//!   (local-only, a string payload) tell handlers and waiters when the
//!   link comes and goes, and what the server refused.
//! - An unreachable server at start-up does not stop the service: the
//!   link keeps trying (with a back-off up to
//!   [`NatsOptions::max_reconnect_delay`]), events stay local meanwhile and
//!   are buffered for the others; [`NatsEvents::connected`] says so (the
//!   main macro adds a `nats` check to `/manage/health`).
//! - Events notified while disconnected, and those sent but not yet
//!   written to the connection (a flush), are buffered up to
//!   [`NatsOptions::buffer`] events and (re)sent after the reconnection.
//!   A server restart also disconnects the receivers, which may come back
//!   after the sender resent: so each process also keeps its last
//!   `buffer` written events, and a process that reconnects asks the
//!   others (on `_SERVE_COMMON.<prefix>.resend`) for what they sent after
//!   the last event it got from each (from a sender it never heard of:
//!   since two seconds before it lost the connection). Replayed events
//!   may arrive after later ones. Every event carries its sender and
//!   a sequence number, so a receiver drops the copies. Beyond the bound,
//!   events are dropped, counted ([`NatsEvents::dropped`]) and logged.
//!   Memory: up to three times `buffer` events per process (the hand-off,
//!   the unsent, the replay ring), plus about 600 bytes per sender heard.
//! - Order: one sender's events on one subject arrive in order; across
//!   subjects, and replays, they may not. Subscriptions grow as soon as a
//!   registration needs them and shrink at the next registration change.
//! - An event larger than the server's `max_payload` is not sent: it is
//!   logged and counted ([`NatsEvents::oversize`]), and
//!   [`EventBus::try_notify`] returns it as an error to the notifier.
//! - Wrong credentials are logged as the server's refusal; the service runs
//!   on, local-only, and the health check fails.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::registry::Interest;
use super::{Event, EventBus, EventTransport};
use crate::config::{Config, ConfigError};

/// The local-only event notified when the link (re)connects, once the
/// server has its subscriptions; the payload is the server's name.
pub const CONNECTED_EVENT: &str = "nats:connected";
/// The local-only event notified when the link loses its server (the
/// payload is the URL, without credentials).
pub const DISCONNECTED_EVENT: &str = "nats:disconnected";
/// The local-only event notified when the server reports an error, such
/// as refused credentials (the payload is the message).
pub const ERROR_EVENT: &str = "nats:error";

/// Events waiting in the bus beyond which incoming ones are dropped.
pub const INCOMING_BACKLOG: u64 = 1_000_000;
/// The default of [`NatsOptions::buffer`].
pub const DEFAULT_BUFFER: usize = 65_536;
/// Events published before one flush.
const BATCH: usize = 8_192;
/// The longest a publish, flush or subscribe may wait (the client stops
/// taking commands while it reconnects).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How to authenticate to the NATS server.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An NKey seed.
    NKey(String),
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets themselves.
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            Self::NKey(_) => f.write_str("NKey(<redacted>)"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// TLS settings.
#[derive(Clone, Debug, Default)]
pub struct NatsTls {
    /// Refuse a plain connection.
    pub required: bool,
    /// Extra root certificates (PEM).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where and how to connect; see [`NatsOptions::from_config`]. Its
/// `Debug` shows no secret (nor the URL's user information).
#[derive(Clone)]
pub struct NatsOptions {
    /// The server URL(s), comma-separated: `nats://host:4222,nats://other:4222`.
    pub url: String,
    /// The subjects' prefix: one per service (see the module docs).
    pub subject_prefix: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Events kept while disconnected or not yet written, at most (and
    /// as many again for replays).
    pub buffer: usize,
    /// The longest wait between two reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// The connection's name, as the server shows it.
    pub name: Option<String>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &self.redacted_url())
            .field("subject_prefix", &self.subject_prefix)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("buffer", &self.buffer)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("name", &self.name)
            .finish()
    }
}

impl NatsOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subject_prefix: format!(
                "serve-common.{}",
                crate::main_entry::app_name()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    })
                    .collect::<String>()
            ),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            buffer: DEFAULT_BUFFER,
            max_reconnect_delay: Duration::from_secs(2),
            name: None,
        }
    }

    /// Reads the `[events.nats]` config section; `None` when `url` is not
    /// set (NATS off). Keys: `url`, `subject_prefix`, `token`, `user` and
    /// `password`, `nkey` (a seed), `creds` (a file), `tls` (bool: require
    /// TLS), `ca`, `client_cert` and `client_key` (files), `buffer`
    /// (events), `max_reconnect_delay_ms`, `name`.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(url) = config.get_opt::<String>("events.nats.url")? else {
            return Ok(None);
        };
        let mut options = Self::new(url);
        if let Some(prefix) = config.get_opt::<String>("events.nats.subject_prefix")? {
            options.subject_prefix = prefix;
        }
        let text = |key: &str| config.get_opt::<String>(&format!("events.nats.{key}"));
        options.auth = if let Some(token) = text("token")? {
            NatsAuth::Token(token)
        } else if let Some(user) = text("user")? {
            NatsAuth::UserPassword {
                user,
                password: text("password")?.unwrap_or_default(),
            }
        } else if let Some(seed) = text("nkey")? {
            NatsAuth::NKey(seed)
        } else if let Some(creds) = text("creds")? {
            NatsAuth::CredsFile(creds.into())
        } else {
            NatsAuth::None
        };
        options.tls.required = config.get_or("events.nats.tls", false);
        options.tls.ca = text("ca")?.map(PathBuf::from);
        if let (Some(cert), Some(key)) = (text("client_cert")?, text("client_key")?) {
            options.tls.client_cert = Some((cert.into(), key.into()));
        }
        options.buffer = config.get_or("events.nats.buffer", DEFAULT_BUFFER);
        options.max_reconnect_delay =
            Duration::from_millis(config.get_or("events.nats.max_reconnect_delay_ms", 2_000_u64));
        options.name = text("name")?;
        Ok(Some(options))
    }

    /// The URL(s) without user information, for logs.
    pub fn redacted_url(&self) -> String {
        crate::config::redact_url_userinfo(&self.url)
    }
}

/// What went wrong enabling NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The bus has a link already (IPC or NATS).
    #[error("this event bus already has a link to other processes (IPC or NATS)")]
    AlreadyEnabled,
    /// The options are not usable (a bad URL, an unreadable creds file...).
    #[error("bad NATS options: {0}")]
    Options(String),
    /// A thread could not be started.
    #[error("cannot start the NATS link: {0}")]
    Io(#[from] std::io::Error),
}

/// An event larger than the server accepts (see [`EventBus::try_notify`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "event {event:?} is {size} bytes encoded (or its subject is); NATS accepts at most {max} bytes"
)]
pub struct OversizeEvent {
    /// The event's name.
    pub event: String,
    /// Its encoded size.
    pub size: usize,
    /// The server's limit.
    pub max: usize,
}

/// An event on the wire: `SCE1`, the sender (u64, little-endian), the
/// sequence number (u64), the name's length (u32), the name, then the
/// payload (CBOR, as [`Event::encode_payload`] made it).
const MAGIC: &[u8; 4] = b"SCE1";
const HEADER: usize = 4 + 8 + 8 + 4;

fn encode_wire(origin: u64, seq: u64, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + name.len() + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&origin.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

struct WireRef<'a> {
    origin: u64,
    seq: u64,
    name: &'a str,
    payload: &'a [u8],
}

fn decode_wire(bytes: &[u8]) -> Result<WireRef<'_>, &'static str> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err("not an event envelope");
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let name_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap_or_default()) as usize;
    let rest = &bytes[HEADER..];
    if rest.len() < name_len {
        return Err("the name runs past the end");
    }
    let name = std::str::from_utf8(&rest[..name_len]).map_err(|_| "the name is not UTF-8")?;
    Ok(WireRef {
        origin: u64_at(4),
        seq: u64_at(12),
        name,
        payload: &rest[name_len..],
    })
}

/// What a process asks for after it lost the server: for each sender it
/// had heard from, the last sequence number it had then; for the others,
/// what they notified in the last `age_ms`. Senders replay what they
/// still have of that, on the asker's subjects only, to its inbox only.
#[derive(Serialize, Deserialize)]
struct Resend {
    asker: u64,
    inbox: String,
    after: HashMap<u64, u64>,
    age_ms: u64,
    subjects: Vec<String>,
    /// Made in answer to another's request (see [`Link::request_replay`]).
    reply: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Bytes the envelope adds around the name and the payload.
const WIRE_OVERHEAD: usize = HEADER;

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    oversize: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    dropped_incoming: AtomicU64,
}

struct Shared {
    connected: AtomicBool,
    /// The client, once made: its state is the truth about the connection.
    client: once_cell::sync::OnceCell<async_nats::Client>,
    /// The server's `max_payload` once known (0 before).
    max_payload: AtomicUsize,
    buffered: AtomicUsize,
    last_error: Mutex<Option<String>>,
    stats: Stats,
}

fn count_drop(counter: &AtomicU64, what: &str, event: &str) {
    super::count_drop(counter, &format_args!("NATS {what}"), event);
}

struct Outgoing {
    name: Arc<str>,
    payload: Arc<[u8]>,
}

struct NatsTransport {
    handoff: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    prefix: String,
}

/// The longest subject sent (the server's control lines are limited).
const MAX_SUBJECT: usize = 1_024;

impl NatsTransport {
    fn check_size(&self, name: &str, payload: usize) -> Result<(), OversizeEvent> {
        let subject = self.prefix.len() + 1 + name.len();
        // Escaping can triple a name: measure only when it might matter.
        if subject * 3 > MAX_SUBJECT && subject_for(&self.prefix, name).len() > MAX_SUBJECT {
            return Err(OversizeEvent {
                event: name.chars().take(64).collect(),
                size: subject_for(&self.prefix, name).len(),
                max: MAX_SUBJECT,
            });
        }
        let max = self.shared.max_payload.load(Ordering::Relaxed);
        let size = name.len() + payload + WIRE_OVERHEAD;
        if max > 0 && size > max {
            return Err(OversizeEvent {
                event: name.to_owned(),
                size,
                max,
            });
        }
        Ok(())
    }
}

impl EventTransport for NatsTransport {
    fn publish(&self, event: &Event) {
        let payload = match event.encode_payload() {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "event not sent over NATS");
                return;
            }
        };
        if let Err(error) = self.check_size(event.name(), payload.len()) {
            self.shared.stats.oversize.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "event not sent over NATS");
            return;
        }
        let outgoing = Outgoing {
            name: event.name.clone(),
            payload,
        };
        match self.handoff.try_send(outgoing) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(outgoing)) => {
                count_drop(&self.shared.stats.dropped, "buffer full", &outgoing.name)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(event = event.name(), "NATS link closed; event stays local");
            }
        }
    }

    fn check(&self, event: &str, encoded_len: usize) -> Result<(), String> {
        self.check_size(event, encoded_len)
            .map_err(|e| e.to_string())
    }
}

/// A bus's NATS link, from [`EventBus::enable_nats`]: its state and counters.
pub struct NatsEvents {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The link's thread, and what its end drops (a wake-up for `close`).
    thread: Mutex<Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl fmt::Debug for NatsEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsEvents")
            .field("connected", &self.connected())
            .field("sent", &self.sent())
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl NatsEvents {
    /// Whether the link is connected to a server now.
    pub fn connected(&self) -> bool {
        match self.shared.client.get() {
            Some(client) => client.connection_state() == async_nats::connection::State::Connected,
            None => false,
        }
    }

    /// Whether the link is connected and the server has its
    /// subscriptions (what [`CONNECTED_EVENT`] announces).
    pub fn ready(&self) -> bool {
        self.connected() && self.shared.connected.load(Ordering::Relaxed)
    }

    /// The last error the server or the client reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Events written to the server's connection.
    pub fn sent(&self) -> u64 {
        self.shared.stats.sent.load(Ordering::Relaxed)
    }

    /// Events received from other processes (duplicates not counted).
    pub fn received(&self) -> u64 {
        self.shared.stats.received.load(Ordering::Relaxed)
    }

    /// Events waiting to be sent.
    pub fn buffered(&self) -> usize {
        self.shared.buffered.load(Ordering::Relaxed)
    }

    /// Events not sent because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }

    /// Events not sent because they exceed the server's `max_payload`.
    pub fn oversize(&self) -> u64 {
        self.shared.stats.oversize.load(Ordering::Relaxed)
    }

    /// Copies of events received twice (a resend after a reconnection).
    pub fn duplicates(&self) -> u64 {
        self.shared.stats.duplicates.load(Ordering::Relaxed)
    }

    /// Messages on the service's subjects that were not events.
    pub fn malformed(&self) -> u64 {
        self.shared.stats.malformed.load(Ordering::Relaxed)
    }

    /// Events received but dropped because the bus was too far behind.
    pub fn dropped_incoming(&self) -> u64 {
        self.shared.stats.dropped_incoming.load(Ordering::Relaxed)
    }

    /// Sends what is buffered (for up to two seconds, if connected) and
    /// disconnects: events stay local from now on.
    pub fn close(&self) {
        let _ = self.stop.send(true);
        if let Some((thread, finished)) = self.thread.lock().take() {
            // Bounded: the link sends for up to two seconds, then goes.
            match finished.recv_timeout(Duration::from_secs(4)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!("the NATS link did not stop in time; leaving it");
                }
                _ => {
                    let _ = thread.join();
                }
            }
        }
    }

    /// A health check for `/manage/health`: `Err` while disconnected.
    pub fn health(&self) -> Result<(), String> {
        if self.connected() {
            return Ok(());
        }
        Err(match self.last_error() {
            Some(error) => format!("not connected to NATS (last error: {error})"),
            None => "not connected to NATS".to_owned(),
        })
    }
}

impl Drop for NatsEvents {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl EventBus {
    /// Carries this bus's events to and from every process of the service
    /// over NATS (see the [module docs](self)). Returns at once: the
    /// connection is made (and remade) in the background.
    pub fn enable_nats(&self, options: NatsOptions) -> Result<NatsEvents, NatsError> {
        if !self.claim_ipc_link() {
            return Err(NatsError::AlreadyEnabled);
        }
        let linked = self.link_nats(options);
        if linked.is_err() {
            self.release_ipc_link();
        }
        linked
    }

    fn link_nats(&self, options: NatsOptions) -> Result<NatsEvents, NatsError> {
        if options.url.trim().is_empty() {
            return Err(NatsError::Options("`url` is empty".into()));
        }
        if !valid_prefix(&options.subject_prefix) {
            return Err(NatsError::Options(format!(
                "subject prefix {:?} is not a NATS subject (tokens of letters, digits, `-`, `_`, separated by `.`)",
                options.subject_prefix
            )));
        }
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            client: once_cell::sync::OnceCell::new(),
            max_payload: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            stats: Stats::default(),
        });
        // The hand-off holds a burst while the link's thread catches up.
        let (handoff, outgoing) = mpsc::channel(options.buffer.max(1));
        let (stop, stopped) = watch::channel(false);
        let prefix = options.subject_prefix.clone();
        let (interest_tx, interest_rx) = watch::channel(());
        // Before the link starts, so no registration slips between its
        // first subscriptions and the hook.
        self.set_interest_hook(Some(Arc::new(move || {
            let _ = interest_tx.send(());
        })));
        let bus = self.clone();
        let link_shared = shared.clone();
        let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("serve-common-nats".into())
            .spawn(move || {
                let _finished = finished_tx;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "cannot start the NATS link's runtime; events stay local");
                        return;
                    }
                };
                runtime.block_on(Link::run(
                    options,
                    bus,
                    link_shared,
                    outgoing,
                    interest_rx,
                    stopped,
                ));
            })?;
        self.set_transport(Some(Arc::new(NatsTransport {
            handoff,
            shared: shared.clone(),
            prefix,
        })));
        Ok(NatsEvents {
            shared,
            stop,
            thread: Mutex::new(Some((thread, finished))),
        })
    }
}

/// [`EventBus::enable_nats`] for the global bus, once: later calls return
/// the same link.
pub fn enable_nats(options: NatsOptions) -> Result<&'static NatsEvents, NatsError> {
    LINK.get_or_try_init(|| super::bus().enable_nats(options))
}

static LINK: once_cell::sync::OnceCell<NatsEvents> = once_cell::sync::OnceCell::new();

/// The global bus's NATS link, if [`enable_nats`] made one.
pub fn link() -> Option<&'static NatsEvents> {
    LINK.get()
}

/// An event waiting to be written, or kept for replays.
struct Pending {
    seq: u64,
    /// When it was notified (ms since the epoch).
    at_ms: u64,
    subject: async_nats::Subject,
    bytes: bytes::Bytes,
}

struct Link {
    client: async_nats::Client,
    bus: EventBus,
    shared: Arc<Shared>,
    prefix: String,
    origin: u64,
    next_seq: u64,
    bound: usize,
    /// Oldest first; the first `sent` were handed to the client.
    pending: VecDeque<Pending>,
    sent: usize,
    subscriptions: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    receiver: Arc<Receiver>,
    /// Confirmed events kept for replays (at most `bound`), oldest first.
    sent_ring: VecDeque<Pending>,
    /// Where replay requests go (outside the event subjects).
    control: String,
    /// At the last disconnection: when (ms since the epoch), and the last
    /// sequence number heard from each sender. Kept a minute after the
    /// reconnection, for answering others' requests with ours.
    lost: Option<(u64, HashMap<u64, u64>)>,
    reconnected: Option<std::time::Instant>,
    /// Where replays for this process arrive.
    inbox: String,
    /// The subscriptions in place.
    current_subjects: BTreeSet<String>,
    /// Subjects of the names seen lately (escaping is not free).
    subject_cache: HashMap<Arc<str>, async_nats::Subject>,
}

impl Link {
    async fn run(
        options: NatsOptions,
        bus: EventBus,
        shared: Arc<Shared>,
        mut outgoing: mpsc::Receiver<Outgoing>,
        mut interest: watch::Receiver<()>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let url = options.redacted_url();
        let client = match connect(&options, events_tx).await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(url = %url, %error, "cannot use NATS; events stay local");
                *shared.last_error.lock() = Some(error);
                return;
            }
        };
        let _ = shared.client.set(client.clone());
        tracing::info!(url = %url, prefix = %options.subject_prefix, "NATS link started");
        let receiver = Arc::new(Receiver {
            bus: bus.clone(),
            shared: shared.clone(),
            seen: Mutex::new(HashMap::new()),
        });
        let origin = rand_origin();
        let mut link = Link {
            client,
            bus,
            shared,
            prefix: options.subject_prefix.clone(),
            origin,
            next_seq: 1,
            bound: options.buffer.max(1),
            pending: VecDeque::new(),
            sent: 0,
            subscriptions: HashMap::new(),
            receiver,
            sent_ring: VecDeque::new(),
            control: format!("_SERVE_COMMON.{}.resend", options.subject_prefix),
            subject_cache: HashMap::new(),
            lost: None,
            reconnected: None,
            inbox: format!("_SERVE_COMMON.{}.replay.{origin:x}", options.subject_prefix),
            current_subjects: BTreeSet::new(),
        };
        link.resubscribe().await;
        let inbox = link.inbox.clone();
        // Not one of the registrations' subjects: never made stale.
        let inbox_stop = link.subscribe_task(inbox).await;
        let mut control = match link.client.subscribe(link.control.clone()).await {
            Ok(subscriber) => Some(subscriber),
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to NATS replay requests");
                None
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                Some(event) = events.recv() => link.on_client_event(event, &url).await,
                Some(request) = next_message(&mut control) => link.replay(request).await,
                Ok(()) = interest.changed() => link.resubscribe().await,
                Some(first) = outgoing.recv() => {
                    link.enqueue(first);
                    while link.pending.len() < link.bound + BATCH {
                        match outgoing.try_recv() {
                            Ok(next) => link.enqueue(next),
                            Err(_) => break,
                        }
                    }
                    link.publish_pending().await;
                }
            }
        }
        // Closing: a last chance for what is buffered.
        while let Ok(next) = outgoing.try_recv() {
            link.enqueue(next);
        }
        if link.is_connected() {
            let _ = tokio::time::timeout(Duration::from_secs(2), link.publish_pending()).await;
        }
        if !link.pending.is_empty() {
            tracing::warn!(
                unsent = link.pending.len(),
                "NATS link closed with events not sent"
            );
        }
        for (_, stop) in link.subscriptions.drain() {
            let _ = stop.send(());
        }
        if let Some(stop) = inbox_stop {
            let _ = stop.send(());
        }
        tracing::info!("NATS link closed");
    }

    fn enqueue(&mut self, outgoing: Outgoing) {
        if self.pending.len() >= self.bound {
            count_drop(&self.shared.stats.dropped, "buffer full", &outgoing.name);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.subject_cache.len() >= 4_096 {
            self.subject_cache.clear();
        }
        let prefix = &self.prefix;
        let subject = self
            .subject_cache
            .entry(outgoing.name.clone())
            .or_insert_with(|| subject_for(prefix, &outgoing.name).into())
            .clone();
        let bytes = encode_wire(self.origin, seq, &outgoing.name, &outgoing.payload);
        self.pending.push_back(Pending {
            seq,
            at_ms: now_ms(),
            subject,
            bytes: bytes.into(),
        });
        self.shared
            .buffered
            .store(self.pending.len(), Ordering::Relaxed);
    }

    /// Hands what was not sent yet to the client, then flushes (the bytes
    /// reached the server's socket) and moves what it covers to the
    /// replay ring. Never waits long: while the client reconnects it stops
    /// taking commands, and this loop must keep serving `stop`.
    async fn publish_pending(&mut self) {
        if !self.is_connected() {
            return;
        }
        while self.sent < self.pending.len() {
            let upto = (self.sent + BATCH).min(self.pending.len());
            let mut index = self.sent;
            while index < upto.min(self.pending.len()) {
                let item = &self.pending[index];
                let published = tokio::time::timeout(
                    SEND_TIMEOUT,
                    self.client
                        .publish(item.subject.clone(), item.bytes.clone()),
                )
                .await;
                match published {
                    Ok(Ok(())) => index += 1,
                    Ok(Err(error))
                        if matches!(
                            error.kind(),
                            async_nats::client::PublishErrorKind::MaxPayloadExceeded
                                | async_nats::client::PublishErrorKind::InvalidSubject
                        ) =>
                    {
                        // Never sendable: drop it, or it would block the rest.
                        self.shared.stats.oversize.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(seq = item.seq, %error, "event not sent over NATS");
                        self.pending.remove(index);
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "NATS publish failed; kept for a resend");
                        self.sent = index;
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("NATS publish timed out; kept for a resend");
                        self.sent = index;
                        return;
                    }
                }
            }
            self.sent = index;
            match tokio::time::timeout(SEND_TIMEOUT, self.client.flush()).await {
                Ok(Ok(())) => {
                    let flushed = self.sent;
                    self.sent_ring.extend(self.pending.drain(..flushed));
                    let excess = self.sent_ring.len().saturating_sub(self.bound);
                    self.sent_ring.drain(..excess);
                    self.sent = 0;
                    self.shared
                        .stats
                        .sent
                        .fetch_add(flushed as u64, Ordering::Relaxed);
                    self.shared
                        .buffered
                        .store(self.pending.len(), Ordering::Relaxed);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "NATS flush failed; events kept for a resend");
                    return;
                }
                Err(_) => {
                    tracing::debug!("NATS flush timed out; events kept for a resend");
                    return;
                }
            }
        }
    }

    /// Returns once the server has processed everything this connection
    /// sent before (a flush only writes): a request nobody answers comes
    /// back "no responders" after the server went through the earlier
    /// commands, subscriptions included.
    async fn barrier(&self) {
        if !self.is_connected() {
            // Subscriptions are sent on (re)connection, before `Connected`.
            return;
        }
        let subject = format!("_SERVE_COMMON.barrier.{:x}", self.origin);
        let _ = tokio::time::timeout(
            SEND_TIMEOUT * 5,
            self.client.request(subject, bytes::Bytes::new()),
        )
        .await;
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn on_client_event(&mut self, event: async_nats::Event, url: &str) {
        match event {
            async_nats::Event::Connected => {
                let info = self.client.server_info();
                self.shared
                    .max_payload
                    .store(info.max_payload, Ordering::Relaxed);
                *self.shared.last_error.lock() = None;
                tracing::info!(url = %url, server = %info.server_name, "connected to NATS");
                // Everything not written goes again (receivers drop copies).
                self.sent = 0;
                self.publish_pending().await;
                // Ask the others for what this process missed meanwhile.
                if self.lost.is_some() {
                    self.reconnected = Some(std::time::Instant::now());
                    self.request_replay(false).await;
                }
                // Once the server has our subscriptions, say so.
                self.barrier().await;
                self.shared.connected.store(true, Ordering::Relaxed);
                self.bus.notify_local(CONNECTED_EVENT, info.server_name);
            }
            async_nats::Event::Disconnected => {
                self.shared.connected.store(false, Ordering::Relaxed);
                if self.lost.is_none() {
                    self.lost = Some((now_ms(), self.receiver.lasts()));
                }
                self.reconnected = None;
                tracing::warn!(url = %url, buffered = self.pending.len(), "disconnected from NATS; buffering events");
                self.bus.notify_local(DISCONNECTED_EVENT, url.to_owned());
            }
            async_nats::Event::ServerError(error) => {
                let text = match &error {
                    async_nats::ServerError::AuthorizationViolation => {
                        "the server refused the credentials (authorization violation)".to_owned()
                    }
                    other => other.to_string(),
                };
                self.report_error(url, text);
            }
            async_nats::Event::ClientError(error) => {
                let text = error.to_string();
                let text = if text.contains("authorization violation") {
                    "the server refused the credentials (authorization violation)".to_owned()
                } else {
                    text
                };
                self.report_error(url, text);
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(
                    sid,
                    "NATS: this process reads events too slowly; the server dropped some"
                );
            }
            other => tracing::info!(url = %url, "NATS: {other}"),
        }
    }

    /// Logs an error and tells handlers ([`ERROR_EVENT`]), once per
    /// distinct message in a row (a refused login repeats at every retry).
    fn report_error(&mut self, url: &str, text: String) {
        let mut last = self.shared.last_error.lock();
        if last.as_deref() == Some(text.as_str()) {
            tracing::debug!(url = %url, "NATS error again: {text}");
            return;
        }
        *last = Some(text.clone());
        drop(last);
        tracing::error!(url = %url, "NATS: {text}");
        self.bus.notify_local(ERROR_EVENT, text);
    }

    /// Asks the others to send again what this process missed while it
    /// had lost the server. `reply` marks a request made because another
    /// process asked (it does not make them ask back: no echo).
    async fn request_replay(&mut self, reply: bool) {
        let Some((lost_at, after)) = &self.lost else {
            return;
        };
        let request = Resend {
            asker: self.origin,
            inbox: self.inbox.clone(),
            after: after.clone(),
            // Two seconds before the loss, against the clocks' drift.
            age_ms: now_ms().saturating_sub(*lost_at) + 2_000,
            subjects: self.current_subjects.iter().cloned().collect(),
            reply,
        };
        let mut bytes = Vec::new();
        if ciborium::into_writer(&request, &mut bytes).is_ok() {
            let _ = tokio::time::timeout(
                SEND_TIMEOUT,
                self.client.publish(self.control.clone(), bytes.into()),
            )
            .await;
        }
    }

    /// Another process reconnected: sends it, and it only, what of ours it
    /// may have missed on its subjects.
    async fn replay(&mut self, message: async_nats::Message) {
        let Ok(request) = ciborium::from_reader::<Resend, _>(message.payload.as_ref()) else {
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %message.subject, "a malformed NATS replay request; ignored");
            return;
        };
        if request.asker == self.origin || !request.inbox.starts_with("_SERVE_COMMON.") {
            return;
        }
        // Forget our own loss a minute after we are back.
        if self
            .reconnected
            .is_some_and(|at| at.elapsed() > Duration::from_secs(60))
        {
            self.lost = None;
            self.reconnected = None;
        }
        if !request.reply && self.lost.is_some() {
            // We lost the server too: what the asker sent meanwhile may be
            // missing here (our own request may have reached it too soon).
            self.request_replay(true).await;
        }
        let since = now_ms().saturating_sub(request.age_ms);
        let after = request.after.get(&self.origin).copied();
        let wanted = |item: &&Pending| {
            let recent = match after {
                Some(after) => item.seq > after,
                None => item.at_ms >= since,
            };
            recent
                && request
                    .subjects
                    .iter()
                    .any(|s| subject_matches(s, &item.subject))
        };
        let missed: Vec<bytes::Bytes> = self
            .sent_ring
            .iter()
            .filter(wanted)
            .map(|item| item.bytes.clone())
            .collect();
        if missed.is_empty() {
            return;
        }
        tracing::info!(
            events = missed.len(),
            "replaying events for a process that reconnected"
        );
        for bytes in missed {
            let published = tokio::time::timeout(
                SEND_TIMEOUT,
                self.client.publish(request.inbox.clone(), bytes),
            )
            .await;
            if !matches!(published, Ok(Ok(()))) {
                return;
            }
        }
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.client.flush()).await;
    }

    /// Makes the subscriptions match the registrations: new ones first,
    /// in place on the server, then the stale ones unsubscribed and drained (an overlap
    /// only makes copies, which the sequence numbers drop).
    async fn resubscribe(&mut self) {
        let mut interest = self.bus.interest();
        // The config follows other processes' sets through a hook, not a
        // registration: its events are always wanted.
        for name in [crate::config::SET_EVENT, crate::config::SYNC_EVENT] {
            interest.exact.push(name.into());
        }
        let wanted = subjects(&self.prefix, &interest);
        let stale: Vec<String> = self
            .current_subjects
            .iter()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        let mut added = false;
        for subject in &wanted {
            if !self.current_subjects.contains(subject) {
                if let Some(stop) = self.subscribe_task(subject.clone()).await {
                    self.subscriptions.insert(subject.clone(), stop);
                    self.current_subjects.insert(subject.clone());
                    added = true;
                }
            }
        }
        if added {
            self.barrier().await;
        }
        for subject in stale {
            if let Some(stop) = self.subscriptions.remove(&subject) {
                let _ = stop.send(());
                tracing::debug!(%subject, "NATS subscription removed");
            }
            self.current_subjects.remove(&subject);
        }
    }

    /// Subscribes to `subject`; a task hands its messages to the receiver
    /// until told to stop (through the returned sender), then unsubscribes
    /// and drains what is left.
    async fn subscribe_task(
        &mut self,
        subject: String,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        let subscribed =
            tokio::time::timeout(SEND_TIMEOUT, self.client.subscribe(subject.clone())).await;
        let mut subscriber = match subscribed {
            Ok(Ok(subscriber)) => subscriber,
            Ok(Err(error)) => {
                tracing::error!(%subject, %error, "cannot subscribe on NATS");
                return None;
            }
            Err(_) => {
                tracing::warn!(%subject, "NATS subscribe timed out; retried at the next change");
                return None;
            }
        };
        let receiver = self.receiver.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) => receiver.receive(message),
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            let _ = subscriber.unsubscribe().await;
            while let Some(message) = subscriber.next().await {
                receiver.receive(message);
            }
        });
        tracing::debug!(%subject, "NATS subscription added");
        Some(stop)
    }
}

/// Whether a subscription `pattern` (a literal subject, or tokens then
/// `>`) covers `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    match pattern.strip_suffix(">") {
        Some(stem) => subject.len() > stem.len() && subject.starts_with(stem),
        None => pattern == subject,
    }
}

/// What the subscriptions' tasks share: they hand events to the bus
/// themselves (no hop through the link's loop).
struct Receiver {
    bus: EventBus,
    shared: Arc<Shared>,
    /// Per sender: what was delivered.
    seen: Mutex<HashMap<u64, Heard>>,
}

/// What a process got from one sender: the highest sequence number, and
/// which of the last [`WINDOW`] numbers arrived (a replay may fill in
/// behind later events; anything older counts as a copy). A ring of bits.
struct Heard {
    last: u64,
    bits: Box<[u64; (WINDOW / 64) as usize]>,
}

impl Default for Heard {
    fn default() -> Self {
        Self {
            last: 0,
            bits: Box::new([0; (WINDOW / 64) as usize]),
        }
    }
}

const WINDOW: u64 = 4_096;

impl Heard {
    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    /// Whether `seq` is new (and records it).
    fn accept(&mut self, seq: u64) -> bool {
        if seq + WINDOW <= self.last {
            return false;
        }
        if seq > self.last {
            // The numbers between become "not arrived".
            if seq - self.last >= WINDOW {
                self.bits.fill(0);
            } else {
                for skipped in self.last + 1..seq {
                    let (word, mask) = Self::bit(skipped);
                    self.bits[word] &= !mask;
                }
            }
            self.last = seq;
        } else {
            let (word, mask) = Self::bit(seq);
            if self.bits[word] & mask != 0 {
                return false;
            }
        }
        let (word, mask) = Self::bit(seq);
        self.bits[word] |= mask;
        true
    }
}

impl Receiver {
    /// Per sender, the last sequence number heard.
    fn lasts(&self) -> HashMap<u64, u64> {
        self.seen
            .lock()
            .iter()
            .map(|(origin, heard)| (*origin, heard.last))
            .collect()
    }

    fn receive(&self, message: async_nats::Message) {
        let wire = match decode_wire(&message.payload) {
            Ok(wire) => wire,
            Err(error) => {
                self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %message.subject, %error, "a message on the service's subjects is not an event; dropped");
                return;
            }
        };
        let new = self
            .seen
            .lock()
            .entry(wire.origin)
            .or_default()
            .accept(wire.seq);
        if !new {
            self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        if self.bus.backlog() >= INCOMING_BACKLOG {
            count_drop(
                &self.shared.stats.dropped_incoming,
                "incoming backlog full",
                wire.name,
            );
            return;
        }
        self.bus
            .deliver(Event::from_remote(wire.name, wire.payload));
    }
}

async fn next_message(
    subscriber: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match subscriber {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// Splits `user:pass@` (or `token@`) out of the URLs: the client would log
/// the URLs whole. Returns the bare URLs and the credentials found.
fn split_userinfo(urls: &str) -> (String, Option<NatsAuth>) {
    let mut auth = None;
    let bare: Vec<String> = urls
        .split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let info = &url[scheme + 3..at];
                auth.get_or_insert_with(|| match info.split_once(':') {
                    Some((user, password)) => NatsAuth::UserPassword {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    },
                    None => NatsAuth::Token(info.to_owned()),
                });
                format!("{}{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.trim().to_owned(),
        })
        .collect();
    (bare.join(","), auth)
}

async fn connect(
    options: &NatsOptions,
    events: mpsc::UnboundedSender<async_nats::Event>,
) -> Result<async_nats::Client, String> {
    let (url, url_auth) = split_userinfo(&options.url);
    let auth = match (&options.auth, url_auth) {
        (NatsAuth::None, Some(from_url)) => from_url,
        (auth, _) => auth.clone(),
    };
    let mut connect = match &auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("cannot read the creds file {}: {e}", path.display()))?,
    };
    if options.tls.required {
        connect = connect.require_tls(true);
    }
    if let Some(ca) = &options.tls.ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &options.tls.client_cert {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(name) = &options.name {
        connect = connect.name(name);
    }
    let max_delay = options.max_reconnect_delay;
    connect
        // A burst waits in the subscription's queue rather than being
        // dropped by the client as a slow consumer.
        .subscription_capacity(options.buffer.max(65_536))
        .client_capacity(BATCH * 2)
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(move |attempts| {
            (Duration::from_millis(50) * (attempts.min(64) as u32)).min(max_delay)
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        })
        .connect(url.as_str())
        .await
        .map_err(|e| e.to_string())
}

fn rand_origin() -> u64 {
    // std's randomly keyed hasher over the pid and the clock: distinct
    // across processes, hosts and restarts (containers share pids).
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish().max(1)
}

/// Whether `prefix` is a valid literal subject.
fn valid_prefix(prefix: &str) -> bool {
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
    fn envelopes_round_trip_and_garbage_is_an_error_not_a_panic() {
        let bytes = encode_wire(7, 9, "a.b", b"\x18\x2a");
        let wire = decode_wire(&bytes).unwrap();
        assert_eq!(
            (wire.origin, wire.seq, wire.name, wire.payload),
            (7, 9, "a.b", &b"\x18\x2a"[..])
        );
        assert!(decode_wire(b"").is_err());
        assert!(
            decode_wire(b"XXXX0123456789abcdef0123").is_err(),
            "bad magic"
        );
        assert!(decode_wire(&bytes[..HEADER + 1]).is_err(), "name cut short");
        let mut huge = bytes.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_wire(&huge).is_err(), "name length past the end");
        let mut bad_utf8 = encode_wire(1, 1, "ab", b"");
        bad_utf8[HEADER] = 0xff;
        assert!(decode_wire(&bad_utf8).is_err());
    }

    #[test]
    fn copies_are_dropped_and_late_replays_fill_in() {
        let mut heard = Heard::default();
        assert!(heard.accept(1));
        assert!(heard.accept(5));
        assert!(!heard.accept(5), "a copy");
        assert!(heard.accept(3), "a replay filling a gap");
        assert!(!heard.accept(3));
        assert!(heard.accept(5 + WINDOW));
        assert!(!heard.accept(4), "older than the window counts as a copy");
    }

    #[test]
    fn subscriptions_match_subjects_like_the_server() {
        assert!(subject_matches("p.a.>", "p.a.b"));
        assert!(subject_matches("p.a.>", "p.a.b.c"));
        assert!(!subject_matches("p.a.>", "p.a"));
        assert!(!subject_matches("p.a.>", "p.ab.c"));
        assert!(subject_matches("p.a.b", "p.a.b"));
        assert!(!subject_matches("p.a.b", "p.a.b.c"));
    }

    #[test]
    fn credentials_in_urls_are_split_out() {
        let (bare, auth) = split_userinfo("nats://u:pw@h:4222,nats://h2:4222");
        assert_eq!(bare, "nats://h:4222,nats://h2:4222");
        assert!(
            matches!(auth, Some(NatsAuth::UserPassword { ref user, ref password }) if user == "u" && password == "pw")
        );
        let (_, auth) = split_userinfo("nats://tok@h");
        assert!(matches!(auth, Some(NatsAuth::Token(ref t)) if t == "tok"));
        let options = NatsOptions::new("nats://u:secret@h");
        assert!(!format!("{options:?}").contains("secret"));
    }

    #[test]
    fn urls_lose_their_user_information_in_logs() {
        let options = NatsOptions::new("nats://u:secret@h:4222,nats://h2:4222");
        assert_eq!(
            options.redacted_url(),
            "nats://<redacted>@h:4222,nats://h2:4222"
        );
        let debug = format!(
            "{:?}",
            NatsAuth::UserPassword {
                user: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!debug.contains("secret"));
    }
}
