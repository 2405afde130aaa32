//! Events across machines, over NATS (feature `nats`).
//!
//! [`EventBus::enable_nats`] connects the bus to a NATS server (or
//! cluster). Every process of the service connects itself: an event
//! notified in any process, on any host, runs each matching handler once
//! in every process, because each process publishes what it notifies
//! (not local-only events) and receives what the others publish; the
//! notifier's own handlers run locally and are not run again when its
//! event comes back. With NATS on, IPC does not carry events
//! (`#[serve_common::main]` picks one): a process has one link.
//!
//! ## Delivery
//!
//! [`Delivery::JetStream`] (config `events.nats.delivery = "jetstream"`,
//! the default) uses the server's JetStream engine: the service has one
//! stream (subjects `<prefix>.>`, [`StreamOptions`]), created at start-up
//! if missing and checked if present (different settings are an error,
//! never a silent change). Every event is published with a `Nats-Msg-Id`
//! unique to its process and number, and resent until the stream
//! acknowledges it (at most [`NatsOptions::ack_window`] in flight); a
//! resend after a lost acknowledgement is dropped by the server as a
//! copy. Every process reads the stream through its own consumer, which
//! starts at the stream's end when the process first connects and, after
//! a disconnection, a server restart or a cluster leader change, resumes
//! after the last event it handled: each event runs each matching handler
//! exactly once in every process that was connected when it was written
//! (or that connects within the stream's `max_age` after a disconnection).
//!
//! [`Delivery::AtMostOnce`] (`"at-most-once"`) is core NATS
//! publish/subscribe, for servers without JetStream: nothing is stored, so
//! a process that is disconnected while an event is written does not get
//! it. What a process notifies while disconnected is still buffered (up to
//! [`NatsOptions::buffer`]) and sent after the reconnection, and the
//! runtime config sets it missed are asked for then
//! ([`crate::config::SYNC_EVENT`]), so every process converges.
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
//! `a..b`) is the token `%`. The message carries the name itself too, and
//! a message whose name is not its subject's is refused.
//!
//! Subscriptions follow the registrations: an exact name subscribes to its
//! subject; a glob subscribes to the tokens before its first wildcard
//! (`job.*.done` -> `<prefix>.job.>`); a glob that starts with a wildcard
//! and a regex fall back to `<prefix>.>`. In JetStream mode these are the
//! consumer's filter when one subject covers them all (servers before 2.10
//! take one filter), else `<prefix>.>`. The bus still matches each event
//! against the handlers, so these are filters that can only let more
//! through, never less.
//!
//! Replies to a process (the stream's acknowledgements of its publishes,
//! the answer that tells it the server has its subscriptions) come on
//! subjects under `_SERVE_COMMON.<prefix>.`: with subject permissions on
//! the server, let the service's user publish and subscribe there too.
//!
//! ## Faults
//!
//! - [`CONNECTED_EVENT`], [`DISCONNECTED_EVENT`] and [`ERROR_EVENT`]
//!   (local-only, a string payload) tell handlers and waiters when the
//!   link comes and goes, and what the server refused.
//! - An unreachable server at start-up does not stop the service: the
//!   link keeps trying (waits doubling up to
//!   [`NatsOptions::max_reconnect_delay`], each jittered so a fleet does
//!   not come back in step), events stay local meanwhile and are buffered
//!   for the others; [`NatsEvents::health`] says so (the main macro adds a
//!   `nats` check to `/manage/health`, with the stream's state and the
//!   consumer's lag).
//! - At most [`NatsOptions::buffer`] events wait to be sent (JetStream:
//!   to be acknowledged); beyond, events are dropped, counted
//!   ([`NatsEvents::dropped`]) and logged. The config's own events
//!   ([`crate::config::SET_EVENT`], [`crate::config::SYNC_EVENT`]) are
//!   never dropped for room, sent or received.
//! - A message on the service's subjects that is not a well-formed event
//!   (garbage, a sequence number out of range, a name that is not its
//!   subject's, a `Nats-Msg-Id` that is not its envelope's) is dropped,
//!   counted ([`NatsEvents::malformed`]) and logged; a config change
//!   carried by an event passes the same checks as a local one.
//! - Order: one sender's events arrive in the order it notified them
//!   (JetStream: in the stream's order; at most once: per subject).
//! - An event larger than the server's `max_payload` is not sent: it is
//!   logged and counted ([`NatsEvents::oversize`]), and
//!   [`EventBus::try_notify`] returns it as an error to the notifier.
//! - Wrong credentials, a TLS failure or a stream that cannot be used are
//!   logged and on the health check; the service runs on, local-only.

mod core;
mod jetstream;
mod options;
mod subjects;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{Event, EventBus, EventTransport};

pub use self::options::{
    Delivery, NatsAuth, NatsOptions, NatsTls, StreamOptions, DEFAULT_ACK_WINDOW, DEFAULT_BUFFER,
};
pub(crate) use self::subjects::{subject_for, subjects};

/// The local-only event notified when the link (re)connects, once the
/// server has its subscriptions (JetStream: once the stream is checked
/// and its consumer made); the payload is the server's name.
pub const CONNECTED_EVENT: &str = "nats:connected";
/// The local-only event notified when the link loses its server (the
/// payload is the URL, without credentials).
pub const DISCONNECTED_EVENT: &str = "nats:disconnected";
/// The local-only event notified when the server reports an error, such
/// as refused credentials or a stream that cannot be used (the payload is
/// the message).
pub const ERROR_EVENT: &str = "nats:error";

/// Events waiting in the bus beyond which incoming ones are dropped.
pub const INCOMING_BACKLOG: u64 = 1_000_000;
/// Events published before one flush (at most once).
const BATCH: usize = 8_192;
/// How long the link's thread looks for more work before it may sleep.
const LINGER: Duration = Duration::from_micros(30);
/// The longest a publish, flush or subscribe may wait (the client stops
/// taking commands while it reconnects).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

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

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    oversize: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    dropped_incoming: AtomicU64,
    resent: AtomicU64,
}

struct Shared {
    delivery: Delivery,
    /// Connected, and (JetStream) the stream checked and the consumer made.
    ready: AtomicBool,
    /// The client, once made: its state is the truth about the connection.
    client: once_cell::sync::OnceCell<async_nats::Client>,
    /// The server's `max_payload` once known (0 before).
    max_payload: AtomicUsize,
    buffered: AtomicUsize,
    /// JetStream: events in the stream this process's consumer has not
    /// read yet (as of its last message).
    lag: AtomicU64,
    /// JetStream: why the stream cannot be used, if it cannot.
    stream_error: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    stats: Stats,
}

impl Shared {
    fn update_buffered(&self, n: usize) {
        self.buffered.store(n, Ordering::Relaxed);
    }
}

fn count_drop(counter: &AtomicU64, what: &str, event: &str) {
    super::count_drop(counter, &format_args!("NATS {what}"), event);
}

/// An event handed from the bus to the link's thread.
struct Outgoing {
    name: Arc<str>,
    /// The event's envelope ([`wire::begin`]), sealed by the link.
    envelope: Vec<u8>,
}

/// The bus's side of the hand-off to the link's thread: at most `room`
/// events wait in it; beyond, an event is dropped (counted), except the
/// config's own events, which always get in (see
/// [`crate::config::is_control_event`]).
///
/// A vector under a lock, not a channel: the link takes all that waits at
/// once, and the dispatcher wakes it only when the vector was empty (a
/// flood costs a lock per event, not a channel's atomics and a wake-up).
struct Handoff {
    shared: Arc<HandoffShared>,
    room: usize,
}

struct HandoffShared {
    items: Mutex<Vec<Outgoing>>,
    wake: tokio::sync::Notify,
    /// The bus's side is gone: nothing more will come.
    closed: AtomicBool,
    /// The link's side is gone: nothing more is taken.
    gone: AtomicBool,
}

/// The link's side of the hand-off.
pub(super) struct Outbox {
    shared: Arc<HandoffShared>,
    /// Taken from the shared vector, not handed out yet.
    taken: std::collections::VecDeque<Outgoing>,
}

fn handoff(room: usize) -> (Handoff, Outbox) {
    let shared = Arc::new(HandoffShared {
        items: Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
        gone: AtomicBool::new(false),
    });
    let handoff = Handoff {
        shared: shared.clone(),
        room: room.max(1),
    };
    let outbox = Outbox {
        shared,
        taken: std::collections::VecDeque::new(),
    };
    (handoff, outbox)
}

/// Why [`Handoff::send`] did not take an event.
enum Refused {
    Full,
    Closed,
}

impl Handoff {
    fn send(&self, outgoing: Outgoing) -> Result<(), Refused> {
        if self.shared.gone.load(Ordering::Relaxed) {
            return Err(Refused::Closed);
        }
        let was_empty = {
            let mut items = self.shared.items.lock();
            if items.len() >= self.room && !crate::config::is_control_event(&outgoing.name) {
                return Err(Refused::Full);
            }
            items.push(outgoing);
            items.len() == 1
        };
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.gone.store(true, Ordering::Relaxed);
    }
}

impl Outbox {
    /// The next event; `None` once the bus's side is gone and all was
    /// taken. Cancel-safe: what was taken stays in `taken`.
    async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(next) = self.try_recv() {
                return Some(next);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return self.try_recv();
            }
            // A send since the look left a permit (`notify_one`): no
            // wake-up is lost.
            let shared = self.shared.clone();
            shared.wake.notified().await;
        }
    }

    fn try_recv(&mut self) -> Option<Outgoing> {
        if self.taken.is_empty() {
            let mut items = self.shared.items.lock();
            self.taken.extend(items.drain(..));
        }
        self.taken.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.taken.is_empty() && self.shared.items.lock().is_empty()
    }
}

struct NatsTransport {
    handoff: Handoff,
    shared: Arc<Shared>,
    prefix: String,
}

/// The longest subject sent (the server's control lines are limited).
const MAX_SUBJECT: usize = 1_024;
/// Bytes JetStream's headers add (the `Nats-Msg-Id`), at most.
const HEADERS_OVERHEAD: usize = 64;

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
        let headers = match self.shared.delivery {
            Delivery::JetStream => HEADERS_OVERHEAD,
            Delivery::AtMostOnce => 0,
        };
        let size = name.len() + payload + wire::HEADER + headers;
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
        // The payload goes straight into the envelope (no buffer of its
        // own to copy from).
        let mut envelope = wire::begin(event.name(), 16);
        if let Err(error) = event.encode_payload_into(&mut envelope) {
            tracing::error!(%error, "event not sent over NATS");
            return;
        }
        let payload = envelope.len() - wire::HEADER - event.name().len();
        if let Err(error) = self.check_size(event.name(), payload) {
            self.shared.stats.oversize.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "event not sent over NATS");
            return;
        }
        let outgoing = Outgoing {
            name: event.name.clone(),
            envelope,
        };
        match self.handoff.send(outgoing) {
            Ok(()) => {}
            Err(Refused::Full) => {
                count_drop(&self.shared.stats.dropped, "buffer full", event.name());
            }
            Err(Refused::Closed) => {
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
            .field("delivery", &self.delivery())
            .field("connected", &self.connected())
            .field("sent", &self.sent())
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl NatsEvents {
    /// How this link carries events.
    pub fn delivery(&self) -> Delivery {
        self.shared.delivery
    }

    /// Whether the link is connected to a server now.
    pub fn connected(&self) -> bool {
        match self.shared.client.get() {
            Some(client) => client.connection_state() == async_nats::connection::State::Connected,
            None => false,
        }
    }

    /// Whether the link is connected and carrying events: the server has
    /// its subscriptions, or (JetStream) the stream is checked and the
    /// consumer made (what [`CONNECTED_EVENT`] announces).
    pub fn ready(&self) -> bool {
        self.connected() && self.shared.ready.load(Ordering::Relaxed)
    }

    /// The last error the server or the client reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// JetStream: why the service's stream cannot be used (it differs
    /// from the configured one, the server has no JetStream...), if so.
    pub fn stream_error(&self) -> Option<String> {
        self.shared.stream_error.lock().clone()
    }

    /// Events sent: written to the connection (at most once) or
    /// acknowledged by the stream (JetStream).
    pub fn sent(&self) -> u64 {
        self.shared.stats.sent.load(Ordering::Relaxed)
    }

    /// Events received from other processes.
    pub fn received(&self) -> u64 {
        self.shared.stats.received.load(Ordering::Relaxed)
    }

    /// Events notified here and not sent yet: not yet written to the
    /// connection (at most once) or not yet acknowledged by the stream
    /// (JetStream; it reaches 0 once the stream has them all).
    pub fn buffered(&self) -> usize {
        self.shared.buffered.load(Ordering::Relaxed)
    }

    /// JetStream: events in the stream this process has not read yet, as
    /// of the last one it read.
    pub fn lag(&self) -> u64 {
        self.shared.lag.load(Ordering::Relaxed)
    }

    /// Events not sent because the buffer was full, or (JetStream)
    /// because the stream kept refusing them.
    pub fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }

    /// Events not sent because they exceed the server's `max_payload`.
    pub fn oversize(&self) -> u64 {
        self.shared.stats.oversize.load(Ordering::Relaxed)
    }

    /// Copies dropped: (JetStream) resends the stream already had, or (at
    /// most once) an event received twice while subscriptions change.
    pub fn duplicates(&self) -> u64 {
        self.shared.stats.duplicates.load(Ordering::Relaxed)
    }

    /// JetStream: events published again after a failed or lost
    /// acknowledgement.
    pub fn resent(&self) -> u64 {
        self.shared.stats.resent.load(Ordering::Relaxed)
    }

    /// Messages on the service's subjects that were not well-formed events.
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

    /// A health check for `/manage/health`: `Err` while disconnected, or
    /// (JetStream) while the stream cannot be used.
    pub fn health(&self) -> Result<(), String> {
        if !self.connected() {
            return Err(match self.last_error() {
                Some(error) => format!("not connected to NATS (last error: {error})"),
                None => "not connected to NATS".to_owned(),
            });
        }
        if let Some(error) = self.stream_error() {
            return Err(format!("the JetStream stream cannot be used: {error}"));
        }
        if !self.ready() {
            return Err("connected to NATS, not carrying events yet".to_owned());
        }
        Ok(())
    }

    /// The link's state for `/manage/health`: connected, the delivery,
    /// (JetStream) whether the stream is reachable and the consumer's lag
    /// in events, and what waits to be sent.
    pub fn health_details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut details = serde_json::Map::new();
        details.insert("connected".into(), self.connected().into());
        details.insert("delivery".into(), self.delivery().to_string().into());
        if self.delivery() == Delivery::JetStream {
            details.insert("stream_reachable".into(), self.ready().into());
            details.insert("consumer_lag".into(), self.lag().into());
        }
        details.insert("buffered".into(), (self.buffered() as u64).into());
        details.insert("dropped".into(), self.dropped().into());
        details
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
        options.validate().map_err(NatsError::Options)?;
        let shared = Arc::new(Shared {
            delivery: options.delivery,
            ready: AtomicBool::new(false),
            client: once_cell::sync::OnceCell::new(),
            max_payload: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            lag: AtomicU64::new(0),
            stream_error: Mutex::new(None),
            last_error: Mutex::new(None),
            stats: Stats::default(),
        });
        // The hand-off holds a burst while the link's thread catches up.
        let (handoff, outgoing) = handoff(options.buffer);
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
                // One thread: a second worker sends more events per second
                // but costs each one a wake-up (measured: +25% throughput,
                // +30% latency).
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

/// What both kinds of link share: the connection, its news, the hand-off
/// from the bus, and the receiving side.
struct Link {
    client: async_nats::Client,
    bus: EventBus,
    shared: Arc<Shared>,
    options: NatsOptions,
    /// This process's sender id (random, per start).
    origin: u64,
    next_seq: u64,
    /// The redacted URL, for logs.
    url: String,
    outgoing: Outbox,
    interest: watch::Receiver<()>,
    stopped: watch::Receiver<bool>,
    events: mpsc::UnboundedReceiver<async_nats::Event>,
    receiver: Arc<Receiver>,
    /// Subjects of the names seen lately (escaping is not free).
    subject_cache: HashMap<Arc<str>, async_nats::Subject>,
    /// The last event's name and subject (a run of one event is common).
    last_subject: Option<(Arc<str>, async_nats::Subject)>,
    /// When TLS was last looked into, and what was found.
    tls_diagnosis: Option<(std::time::Instant, Option<String>)>,
}

/// What the link's loop learns from one of the client's events.
enum News {
    Connected,
    Disconnected,
    Other,
}

impl Link {
    async fn run(
        options: NatsOptions,
        bus: EventBus,
        shared: Arc<Shared>,
        outgoing: Outbox,
        interest: watch::Receiver<()>,
        stopped: watch::Receiver<bool>,
    ) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let url = options.redacted_url();
        let client = match options::connect(&options, events_tx).await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(url = %url, %error, "cannot use NATS; events stay local");
                *shared.last_error.lock() = Some(error.clone());
                bus.notify_local(ERROR_EVENT, error);
                return;
            }
        };
        let _ = shared.client.set(client.clone());
        // From now on the link hands out one-per-service events.
        bus.route_shared(true);
        tracing::info!(url = %url, prefix = %options.subject_prefix, delivery = %options.delivery, "NATS link started");
        let origin = rand_origin();
        let receiver = Arc::new(Receiver {
            bus: bus.clone(),
            shared: shared.clone(),
            prefix: options.subject_prefix.clone(),
            origin,
            seen: Mutex::new(HashMap::new()),
            last_name: Mutex::new(None),
        });
        let link = Link {
            client,
            bus,
            shared,
            options,
            origin,
            next_seq: 1,
            url,
            outgoing,
            interest,
            stopped,
            events,
            receiver,
            subject_cache: HashMap::new(),
            last_subject: None,
            tls_diagnosis: None,
        };
        let bus = link.bus.clone();
        match link.options.delivery {
            Delivery::JetStream => jetstream::run(link).await,
            Delivery::AtMostOnce => core::run(link).await,
        }
        bus.route_shared(false);
        tracing::info!("NATS link closed");
    }

    /// The subject and envelope of the next event.
    fn wrap(&mut self, outgoing: Outgoing) -> (u64, async_nats::Subject, bytes::Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let subject = match &self.last_subject {
            // A run of one event: no look-up.
            Some((name, subject))
                if Arc::ptr_eq(name, &outgoing.name) || **name == *outgoing.name =>
            {
                subject.clone()
            }
            _ => {
                if self.subject_cache.len() >= 4_096 {
                    self.subject_cache.clear();
                }
                let prefix = &self.options.subject_prefix;
                let subject = self
                    .subject_cache
                    .entry(outgoing.name.clone())
                    .or_insert_with(|| subject_for(prefix, &outgoing.name).into())
                    .clone();
                self.last_subject = Some((outgoing.name, subject.clone()));
                subject
            }
        };
        let mut envelope = outgoing.envelope;
        wire::seal(&mut envelope, self.origin, seq);
        (seq, subject, envelope.into())
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Right after some work, lets the runtime's other tasks (the
    /// client's connection) run and looks for the next event for a few
    /// microseconds before the thread may sleep: waking a sleeping thread
    /// costs more than this wait (the bus's dispatcher does the same).
    async fn linger(&mut self) {
        let started = std::time::Instant::now();
        while self.outgoing.is_empty() && started.elapsed() < LINGER {
            tokio::task::yield_now().await;
        }
    }

    /// What the subscriptions (or the consumer's filter) must cover: the
    /// registrations, and the config's own events (it follows other
    /// processes' sets through a hook, not a registration).
    fn wanted_subjects(&self) -> std::collections::BTreeSet<String> {
        let mut interest = self.bus.interest();
        for name in [crate::config::SET_EVENT, crate::config::SYNC_EVENT] {
            interest.exact.push(name.into());
        }
        subjects(&self.options.subject_prefix, &interest)
    }

    /// Records what the client reported; says what it means for the loop.
    async fn on_client_event(&mut self, event: async_nats::Event) -> News {
        let url = &self.url;
        match event {
            async_nats::Event::Connected => {
                let info = self.client.server_info();
                self.shared
                    .max_payload
                    .store(info.max_payload, Ordering::Relaxed);
                *self.shared.last_error.lock() = None;
                tracing::info!(url = %url, server = %info.server_name, "connected to NATS");
                News::Connected
            }
            async_nats::Event::Disconnected => {
                self.shared.ready.store(false, Ordering::Relaxed);
                tracing::warn!(url = %url, buffered = self.shared.buffered.load(Ordering::Relaxed), "disconnected from NATS; buffering events");
                self.bus.notify_local(DISCONNECTED_EVENT, url.to_owned());
                News::Disconnected
            }
            async_nats::Event::ServerError(error) => {
                let text = match &error {
                    async_nats::ServerError::AuthorizationViolation => {
                        "the server refused the credentials (authorization violation)".to_owned()
                    }
                    other => other.to_string(),
                };
                self.report_error(text);
                News::Other
            }
            async_nats::Event::ClientError(error) => {
                let mut text = error.to_string();
                if text.contains("authorization violation") {
                    text =
                        "the server refused the credentials (authorization violation)".to_owned();
                } else if (text.contains("IO error") || text.contains("TLS error"))
                    && self.options.uses_tls()
                {
                    // The client says no more: find out whether TLS is why.
                    let due = self
                        .tls_diagnosis
                        .as_ref()
                        .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(30));
                    if due {
                        let reason = options::diagnose_tls(&self.options).await;
                        self.tls_diagnosis = Some((std::time::Instant::now(), reason));
                    }
                    if let Some((_, Some(reason))) = &self.tls_diagnosis {
                        text = reason.clone();
                    }
                }
                self.report_error(text);
                News::Other
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(
                    sid,
                    "NATS: this process reads events too slowly; the server dropped some"
                );
                News::Other
            }
            other => {
                tracing::info!(url = %url, "NATS: {other}");
                News::Other
            }
        }
    }

    /// Says the link carries events: [`CONNECTED_EVENT`].
    fn announce_ready(&self) {
        self.shared.ready.store(true, Ordering::Relaxed);
        let server = self.client.server_info().server_name;
        self.bus.notify_local(CONNECTED_EVENT, server);
    }

    /// Logs an error and tells handlers ([`ERROR_EVENT`]), once per
    /// distinct message in a row (a refused login repeats at every retry).
    fn report_error(&self, text: String) {
        let mut last = self.shared.last_error.lock();
        if last.as_deref() == Some(text.as_str()) {
            tracing::debug!(url = %self.url, "NATS error again: {text}");
            return;
        }
        *last = Some(text.clone());
        drop(last);
        tracing::error!(url = %self.url, "NATS: {text}");
        self.bus.notify_local(ERROR_EVENT, text);
    }
}

/// How many senders the at-most-once receiver remembers (it forgets them
/// all beyond: a copy may then pass, never a loss).
const MAX_SENDERS: usize = 4_096;
/// The largest forward jump of a known sender's sequence number: beyond,
/// a forgery that would silence the sender.
const MAX_JUMP: u64 = 1 << 32;

/// The receiving side: checks what comes from the wire and hands it to
/// the bus (from the subscriptions' or the consumer's task, no hop
/// through the link's loop).
struct Receiver {
    bus: EventBus,
    shared: Arc<Shared>,
    prefix: String,
    origin: u64,
    /// At most once: per sender, the last sequence number delivered (an
    /// event comes twice while two subscriptions overlap).
    seen: Mutex<HashMap<u64, u64>>,
    /// The last event's name: a run of one event shares one copy.
    last_name: Mutex<Option<Arc<str>>>,
}

impl Receiver {
    /// Checks one message and hands it to the bus; whether it did.
    fn receive(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
    ) -> bool {
        let wire = match wire::decode(payload, &self.prefix, subject, headers) {
            Ok(wire) => wire,
            Err(error) => {
                self.refuse(subject, &error);
                return false;
            }
        };
        if wire.origin == self.origin {
            // Ours: its handlers ran here when it was notified.
            return false;
        }
        if self.shared.delivery == Delivery::AtMostOnce {
            let mut seen = self.seen.lock();
            if seen.len() >= MAX_SENDERS && !seen.contains_key(&wire.origin) {
                seen.clear();
            }
            let last = seen.entry(wire.origin).or_insert(0);
            if *last != 0 && wire.seq <= *last {
                drop(seen);
                self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            if *last != 0 && wire.seq - *last > MAX_JUMP {
                let error = format!(
                    "sequence number {} jumps {} past the sender's last",
                    wire.seq,
                    wire.seq - *last
                );
                drop(seen);
                self.refuse(subject, &error);
                return false;
            }
            *last = wire.seq;
        }
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        if self.bus.backlog() >= INCOMING_BACKLOG && !crate::config::is_control_event(wire.name) {
            count_drop(
                &self.shared.stats.dropped_incoming,
                "incoming backlog full",
                wire.name,
            );
            return false;
        }
        self.bus.deliver(self.event(payload, &wire));
        true
    }

    /// The bus's event for a decoded message: its payload shares the
    /// message's buffer, its name the last event's if the same.
    fn event(&self, message: &bytes::Bytes, wire: &wire::WireRef<'_>) -> Event {
        let name = {
            let mut last = self.last_name.lock();
            match &*last {
                Some(name) if **name == *wire.name => name.clone(),
                _ => {
                    let name: Arc<str> = wire.name.into();
                    *last = Some(name.clone());
                    name
                }
            }
        };
        Event::from_wire(name, message.slice_ref(wire.payload))
    }

    /// Checks one message for a one-per-service group (this process's
    /// own events included: the group may hand them here) and hands it to
    /// the group's handlers; `done` says how it went. `None` when the
    /// message is refused (logged and counted).
    fn receive_shared(
        &self,
        key: &Arc<str>,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
        done: super::SharedDone,
    ) -> Option<()> {
        let wire = match wire::decode(payload, &self.prefix, subject, headers) {
            Ok(wire) => wire,
            Err(error) => {
                self.refuse(subject, &error);
                return None;
            }
        };
        self.bus
            .deliver_shared(self.event(payload, &wire), key.clone(), done);
        Some(())
    }

    /// Drops a message that is not a well-formed event, with a log line
    /// (every one up to 16, then at powers of two).
    fn refuse(&self, subject: &str, error: &str) {
        let n = self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 16 || n.is_power_of_two() {
            let subject: String = subject.chars().take(128).collect();
            tracing::warn!(%subject, %error, malformed = n, "a message on the service's subjects is not a well-formed event; dropped");
        }
    }
}

/// The NATS name of a one-per-service group (a durable consumer, a queue
/// group): stable across processes and restarts.
fn group_name(key: &str) -> String {
    format!("serve-common-{:016x}", super::group_hash(key))
}

/// This process's sender id: random, never 0 (refused on the wire).
fn rand_origin() -> u64 {
    crate::random_u64().max(1)
}
