//! Events across the service's processes, over [`crate::ipc`].
//!
//! [`EventBus::enable_ipc`] joins the group [`EVENTS_GROUP`] and makes the
//! link the bus's transport: every event notified in this process that is
//! not local-only goes to every other process of the service, once, in the
//! order it was notified; events from them are delivered here through
//! [`EventBus::deliver`] (not sent back). `register` stays per process.
//!
//! The link's behaviour is documented in the event module's docs
//! ("Across processes: the IPC link"), where users see it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::{Event, EventBus, EventTransport};
use crate::config::{Config, ConfigError};
use crate::ipc::{self, frame, GroupSocket, IpcError};

/// The IPC group events travel in.
pub const EVENTS_GROUP: &str = "serve-common.events";
/// The default of [`IpcOptions::buffer_events`].
pub const OUTGOING_CAPACITY: usize = 65_536;
/// The default of [`IpcOptions::incoming_events`].
pub const INCOMING_BACKLOG: u64 = 1_000_000;
/// Notified here (local-only) when the IPC link goes down; the payload is
/// an [`IpcLinkLost`].
pub const LINK_LOST_EVENT: &str = "ipc:lost";
/// Notified here (local-only) when the IPC link is back; the payload is an
/// [`IpcRejoined`].
pub const LINK_REJOINED_EVENT: &str = "ipc:rejoined";

/// How the IPC link buffers and reconnects; [`IpcOptions::from_config`]
/// reads them from `[events.ipc]`.
#[derive(Clone, Debug)]
pub struct IpcOptions {
    /// Events waiting to be sent, at most (default 65,536).
    pub buffer_events: usize,
    /// Bytes of events waiting to be sent, at most (default 64 MiB).
    pub buffer_bytes: usize,
    /// Events from other processes waiting in the bus beyond which
    /// incoming ones are dropped (default 1,000,000).
    pub incoming_events: u64,
    /// Bytes of events from other processes waiting in the bus beyond
    /// which incoming ones are dropped (default 256 MiB).
    pub incoming_bytes: usize,
    /// How long the link may be down before [`IpcEvents::health`] fails
    /// (default 1 s).
    pub health_grace: Duration,
    /// The longest wait between two reconnection attempts (default 1 s).
    pub max_reconnect_delay: Duration,
}

impl Default for IpcOptions {
    fn default() -> Self {
        Self {
            buffer_events: OUTGOING_CAPACITY,
            buffer_bytes: 64 << 20,
            incoming_events: INCOMING_BACKLOG,
            incoming_bytes: 256 << 20,
            health_grace: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(1),
        }
    }
}

impl IpcOptions {
    /// Reads the `[events.ipc]` config section; missing keys keep their
    /// defaults. Keys: `buffer_events`, `buffer_bytes`, `incoming_events`,
    /// `incoming_bytes`, `health_grace_ms`, `max_reconnect_delay_ms`.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let settings = config
            .get_opt::<IpcSettings>("events.ipc")?
            .unwrap_or_default();
        Ok(Self::from(&settings))
    }
}

impl From<&IpcSettings> for IpcOptions {
    /// The settings, with the defaults where they say nothing.
    fn from(settings: &IpcSettings) -> Self {
        let defaults = Self::default();
        let size = |n: Option<u64>, default: usize| {
            n.map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        let millis = |n: Option<u64>, default: Duration| n.map_or(default, Duration::from_millis);
        Self {
            buffer_events: size(settings.buffer_events, defaults.buffer_events),
            buffer_bytes: size(settings.buffer_bytes, defaults.buffer_bytes),
            incoming_events: settings.incoming_events.unwrap_or(defaults.incoming_events),
            incoming_bytes: size(settings.incoming_bytes, defaults.incoming_bytes),
            health_grace: millis(settings.health_grace_ms, defaults.health_grace),
            max_reconnect_delay: millis(
                settings.max_reconnect_delay_ms,
                defaults.max_reconnect_delay,
            ),
        }
    }
}

/// The `[events]` config section as serve-common reads it (`[events.ipc]`
/// here, `[events.nats]` for the NATS link); registered as a typed
/// [section](crate::config::Config::section) by `#[serve_common::main]`, so
/// an edit with a wrong type is refused like invalid TOML.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EventsSettings {
    /// `[events.ipc]`: see [`IpcOptions::from_config`].
    #[serde(default)]
    pub ipc: IpcSettings,
    /// `[events.nats]`: see the NATS link's options.
    #[serde(default)]
    pub nats: NatsSettings,
    /// `events.async_max_in_flight`: the cap on async handler runs in
    /// flight on the global bus (see [async handlers](crate::event#async-handlers)).
    pub async_max_in_flight: Option<u64>,
    /// `events.async_wait_ms`: how long the dispatcher waits for room
    /// under the cap before it drops a run.
    pub async_wait_ms: Option<u64>,
}

/// `[events.ipc]`, typed.
#[derive(Clone, Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct IpcSettings {
    pub buffer_events: Option<u64>,
    pub buffer_bytes: Option<u64>,
    pub incoming_events: Option<u64>,
    pub incoming_bytes: Option<u64>,
    pub health_grace_ms: Option<u64>,
    pub max_reconnect_delay_ms: Option<u64>,
}

/// `[events.nats]`, typed.
#[derive(Clone, Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct NatsSettings {
    pub url: Option<String>,
    pub subject_prefix: Option<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey: Option<String>,
    pub creds: Option<String>,
    pub tls: Option<bool>,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub buffer: Option<u64>,
    pub max_reconnect_delay_ms: Option<u64>,
    pub name: Option<String>,
    /// `"jetstream"` (the default) or `"at-most-once"`.
    pub delivery: Option<Delivery>,
    pub ack_window: Option<u64>,
    pub ack_wait_s: Option<u64>,
    /// `[events.nats.stream]`.
    #[serde(default)]
    pub stream: NatsStreamSettings,
}

/// `[events.nats.stream]`, typed: the JetStream stream's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct NatsStreamSettings {
    pub name: Option<String>,
    pub max_age_s: Option<u64>,
    pub max_bytes: Option<u64>,
    pub replicas: Option<u64>,
    pub duplicate_window_s: Option<u64>,
    pub memory: Option<bool>,
}

/// How events travel between processes over NATS (config
/// `events.nats.delivery`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Delivery {
    /// Through a JetStream stream: stored (on disk, replicated in a
    /// cluster), acknowledged to the sender, resent until acknowledged
    /// and read by every process from where it left off after a fault.
    /// The default; needs a server with JetStream (`nats-server -js`).
    #[default]
    #[serde(rename = "jetstream")]
    JetStream,
    /// Core NATS publish/subscribe: nothing stored; a process that is
    /// disconnected when an event is written does not get it. Events
    /// notified while this process is disconnected are still buffered
    /// (up to the link's `buffer`) and sent after the reconnection.
    #[serde(rename = "at-most-once")]
    AtMostOnce,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::JetStream => "jetstream",
            Self::AtMostOnce => "at-most-once",
        })
    }
}

impl EventsSettings {
    /// Registers the section on `config`.
    pub fn register(config: &Config) -> Result<crate::config::Section<Self>, ConfigError> {
        use crate::config::section::fields_of;
        config.section_known(
            "events",
            |_: &Self| Ok(()),
            |parent| match parent {
                "" => fields_of::<Self>(),
                "ipc" => fields_of::<IpcSettings>(),
                "nats" => fields_of::<NatsSettings>(),
                "nats.stream" => fields_of::<NatsStreamSettings>(),
                _ => &[],
            },
        )
    }

    /// Applies the async handlers' limits to `bus` (the defaults where
    /// unset).
    ///
    /// Needs the `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn apply_async_limits(&self, bus: &super::EventBus) {
        let max = self
            .async_max_in_flight
            .map_or(super::DEFAULT_MAX_IN_FLIGHT, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        let wait = self
            .async_wait_ms
            .map_or(super::DEFAULT_WAIT, std::time::Duration::from_millis);
        bus.limit_async_handlers(max, wait);
    }
}

/// The payload of [`LINK_LOST_EVENT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcLinkLost {
    /// The server the link was connected to.
    pub server_pid: u32,
    /// Events waiting to be sent when it went down.
    pub waiting: u64,
}

/// The payload of [`LINK_REJOINED_EVENT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcRejoined {
    /// How long the link was down, in milliseconds.
    pub down_ms: u64,
    /// The server the link is connected to now.
    pub server_pid: u32,
    /// The server it was connected to before.
    pub previous_server_pid: u32,
    /// When this server had cut this process off for not reading: how many
    /// messages it discarded for it.
    pub cut_off_missed: Option<u64>,
    /// Messages a restarted server replayed to this process.
    pub replayed: u64,
    /// Events buffered during the outage, now sent.
    pub buffered: u64,
    /// Events dropped during the outage because the buffer was full.
    pub dropped: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireEvent {
    pub(crate) name: String,
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
}

/// [`WireEvent`]'s encoding without copying the payload.
#[derive(Serialize)]
struct WireEventRef<'a> {
    name: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    buffered: AtomicU64,
    dropped_outgoing: AtomicU64,
    dropped_incoming: AtomicU64,
    malformed: AtomicU64,
    rejoins: AtomicU64,
    missed: AtomicU64,
}

/// An event waiting to be sent: one packet's worth of bytes, the whole
/// message tag first (so a message that fits one packet is sent as is).
type Outgoing = Vec<u8>;

struct Out {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    /// The link thread took the front event and is sending it: nothing may
    /// overtake it.
    sending: bool,
    /// The connection while the link is up.
    socket: Option<GroupSocket<WireEvent>>,
    /// Which connection `socket` is (a receiver reports only its own end).
    connection: u64,
    /// The connection failed: the link thread reconnects.
    broken: bool,
    closing: bool,
    /// Since when the link is down.
    down_since: Option<Instant>,
    outage_buffered: u64,
    outage_dropped: u64,
    last_error: Option<String>,
    /// The link thread has returned.
    ended: bool,
}

impl Out {
    fn is_up(&self) -> bool {
        self.socket.is_some() && !self.broken
    }
}

struct Shared {
    out: Mutex<Out>,
    /// Wakes the link thread: something to send, a broken connection, close.
    changed: Condvar,
    stats: Stats,
    options: IpcOptions,
    max_message: AtomicUsize,
}

impl Shared {
    fn count_drop(counter: &AtomicU64, what: &str, event: &str) {
        super::count_drop(counter, &format_args!("IPC link: {what}"), event);
    }
}

struct IpcTransport {
    shared: Arc<Shared>,
    groups: Arc<super::ipc_groups::Groups>,
}

/// CBOR's overhead around a wire event's name and payload, at most.
const WIRE_OVERHEAD: usize = 32;

impl EventTransport for IpcTransport {
    fn publish(&self, event: &Event) {
        let payload = match event.encode_payload() {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "event not sent to other processes");
                return;
            }
        };
        let mut wire = Vec::with_capacity(1 + event.name().len() + payload.len() + WIRE_OVERHEAD);
        wire.push(frame::WHOLE);
        let encoded = ciborium::into_writer(
            &WireEventRef {
                name: event.name(),
                payload: &payload,
            },
            &mut wire,
        );
        if let Err(error) = encoded {
            tracing::error!(%error, event = event.name(), "event not sent to other processes");
            return;
        }
        let shared = &self.shared;
        let max = shared.max_message.load(Ordering::Relaxed);
        if wire.len() - 1 <= max {
            // One-per-service handlers: to their queue groups.
            self.groups.route(event.name(), &wire[1..]);
        }
        if wire.len() - 1 > max {
            Shared::count_drop(
                &shared.stats.dropped_outgoing,
                &format!("an event over the IPC size limit ({max} bytes) was not sent"),
                event.name(),
            );
            return;
        }
        let mut out = shared.out.lock();
        if out.closing {
            return;
        }
        // The fast path: straight to the socket, when nothing waits before it.
        if out.queue.is_empty() && !out.sending && out.is_up() && wire.len() <= frame::MAX_PACKET {
            let socket = out.socket.as_ref().expect("up");
            match socket.try_send_packet(&wire) {
                Ok(true) => {
                    shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(false) => {}
                Err(_) => {
                    out.broken = true;
                    shared.changed.notify_all();
                }
            }
        }
        let options = &shared.options;
        let full = out.queue.len() >= options.buffer_events
            || out.bytes + wire.len() > options.buffer_bytes;
        if full && !crate::config::is_control_event(event.name()) {
            if !out.is_up() {
                out.outage_dropped += 1;
            }
            drop(out);
            Shared::count_drop(
                &shared.stats.dropped_outgoing,
                &format!(
                    "outgoing buffer full ({} events or {} bytes); event not sent to other processes",
                    options.buffer_events, options.buffer_bytes
                ),
                event.name(),
            );
            return;
        }
        if !out.is_up() {
            out.outage_buffered += 1;
            shared.stats.buffered.fetch_add(1, Ordering::Relaxed);
        }
        out.bytes += wire.len();
        out.queue.push_back(wire);
        drop(out);
        shared.changed.notify_all();
    }

    fn check(&self, event: &str, encoded_len: usize) -> Result<(), String> {
        let max = self.shared.max_message.load(Ordering::Relaxed);
        let len = event.len() + encoded_len + WIRE_OVERHEAD;
        if len > max {
            return Err(format!(
                "event {event:?} is about {len} bytes on the wire, over the IPC limit of {max} bytes"
            ));
        }
        Ok(())
    }
}

/// A bus's IPC link, from [`EventBus::enable_ipc`]: its state, counters
/// and health check.
pub struct IpcEvents {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    groups: Arc<super::ipc_groups::Groups>,
    bus: EventBus,
}

impl std::fmt::Debug for IpcEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcEvents")
            .field("up", &self.is_up())
            .field("sent", &self.sent())
            .field("received", &self.received())
            .field("dropped_outgoing", &self.dropped_outgoing())
            .field("dropped_incoming", &self.dropped_incoming())
            .finish_non_exhaustive()
    }
}

impl IpcEvents {
    /// Whether the link is connected to the server now.
    pub fn is_up(&self) -> bool {
        self.shared.out.lock().is_up()
    }

    /// Events sent to the group.
    pub fn sent(&self) -> u64 {
        self.shared.stats.sent.load(Ordering::Relaxed)
    }

    /// Events received from the group.
    pub fn received(&self) -> u64 {
        self.shared.stats.received.load(Ordering::Relaxed)
    }

    /// Events that waited in the outgoing buffer for the link to come back
    /// (sent once it did, unless the process stopped first).
    pub fn buffered(&self) -> u64 {
        self.shared.stats.buffered.load(Ordering::Relaxed)
    }

    /// Events waiting to be sent now.
    pub fn waiting(&self) -> usize {
        self.shared.out.lock().queue.len()
    }

    /// One-per-service events not handed to their group (no connection
    /// to it when they were notified): lost, and logged.
    pub fn dropped_shared(&self) -> u64 {
        self.groups.dropped()
    }

    /// Events not sent: the outgoing buffer was full, or an event was over
    /// the IPC size limit.
    pub fn dropped_outgoing(&self) -> u64 {
        self.shared.stats.dropped_outgoing.load(Ordering::Relaxed)
    }

    /// Events received but dropped because the bus was too far behind.
    pub fn dropped_incoming(&self) -> u64 {
        self.shared.stats.dropped_incoming.load(Ordering::Relaxed)
    }

    /// Messages received that were not events.
    pub fn malformed(&self) -> u64 {
        self.shared.stats.malformed.load(Ordering::Relaxed)
    }

    /// How many times the link came back after going down.
    pub fn rejoins(&self) -> u64 {
        self.shared.stats.rejoins.load(Ordering::Relaxed)
    }

    /// Messages the server discarded for this process when it cut it off
    /// for not reading (as the server reported on rejoining).
    pub fn missed(&self) -> u64 {
        self.shared.stats.missed.load(Ordering::Relaxed)
    }

    /// A health check for `/manage/health`: `Err` once the link has been
    /// down for longer than [`IpcOptions::health_grace`].
    pub fn health(&self) -> Result<(), String> {
        let out = self.shared.out.lock();
        if out.closing {
            return Ok(());
        }
        match out.down_since {
            Some(since) if since.elapsed() >= self.shared.options.health_grace => {
                let mut message = format!(
                    "no IPC link for {:.1?}: events stay in this process ({} waiting, {} dropped so far)",
                    since.elapsed(),
                    out.queue.len(),
                    self.dropped_outgoing()
                );
                if let Some(error) = &out.last_error {
                    message.push_str(&format!("; last error: {error}"));
                }
                Err(message)
            }
            _ => Ok(()),
        }
    }

    /// Sends what is waiting (for up to two seconds, if up) and leaves the
    /// group: events stay local from now on, and the link does not
    /// reconnect. (Dropping this handle does not close the link: it lives
    /// as long as the process.)
    pub fn close(&self) {
        self.groups.close();
        self.bus.route_shared(false);
        let mut out = self.shared.out.lock();
        out.closing = true;
        self.shared.changed.notify_all();
        // Bounded: the link sends for up to two seconds, then goes; a send
        // the server never takes must not hold the process's exit.
        let deadline = Instant::now() + Duration::from_secs(4);
        while !out.ended
            && !self
                .shared
                .changed
                .wait_until(&mut out, deadline)
                .timed_out()
        {}
        let ended = out.ended;
        drop(out);
        match self.thread.lock().take() {
            Some(thread) if ended => {
                let _ = thread.join();
            }
            Some(_) => tracing::warn!("the IPC link did not stop in time; leaving it"),
            None => {}
        }
    }
}

impl EventBus {
    /// Carries this bus's events to and from the service's other processes
    /// with the default [`IpcOptions`]; see [`enable_ipc_with`](Self::enable_ipc_with).
    pub fn enable_ipc(&self) -> Result<IpcEvents, IpcError> {
        self.enable_ipc_with(IpcOptions::default())
    }

    /// Carries this bus's events to and from the service's other processes
    /// (see the [event module docs](crate::event)). IPC must be set up
    /// ([`ipc::start`] or [`ipc::setup`]); the first connection is made
    /// here (an error if the server cannot be reached), later ones in the
    /// background. A bus has one link: a second call is
    /// [`IpcError::AlreadyEnabled`] (two would deliver every event twice).
    pub fn enable_ipc_with(&self, options: IpcOptions) -> Result<IpcEvents, IpcError> {
        if !self.claim_ipc_link() {
            return Err(IpcError::AlreadyEnabled);
        }
        let linked = self.link_ipc(options);
        if linked.is_err() {
            self.release_ipc_link();
        }
        linked
    }

    fn link_ipc(&self, options: IpcOptions) -> Result<IpcEvents, IpcError> {
        let (socket, welcome) = ipc::join::<WireEvent>(EVENTS_GROUP, false, ipc::JOIN_TIMEOUT)?;
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                queue: VecDeque::new(),
                bytes: 0,
                sending: false,
                socket: Some(socket.clone()),
                connection: 1,
                broken: false,
                closing: false,
                down_since: None,
                outage_buffered: 0,
                outage_dropped: 0,
                last_error: None,
                ended: false,
            }),
            changed: Condvar::new(),
            stats: Stats::default(),
            options,
            max_message: AtomicUsize::new(socket.max_message()),
        });
        let receiver = spawn_receiver(self, &shared, socket.clone(), 1)?;
        let link = Link {
            shared: shared.clone(),
            bus: self.clone(),
            server_pid: welcome.server_pid,
        };
        let thread = std::thread::Builder::new()
            .name("serve-common-ipc-link".into())
            .spawn(move || {
                let shared = link.shared.clone();
                link.run(socket, receiver);
                shared.out.lock().ended = true;
                shared.changed.notify_all();
            })?;
        let groups = super::ipc_groups::Groups::start(self)?;
        self.route_shared(true);
        self.set_transport(Some(Arc::new(IpcTransport {
            shared: shared.clone(),
            groups: groups.clone(),
        })));
        Ok(IpcEvents {
            shared,
            thread: Mutex::new(Some(thread)),
            groups,
            bus: self.clone(),
        })
    }
}

/// Reads one connection until it ends; reports the end to the link.
fn spawn_receiver(
    bus: &EventBus,
    shared: &Arc<Shared>,
    socket: GroupSocket<WireEvent>,
    connection: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let bus = bus.clone();
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("serve-common-ipc-recv".into())
        .spawn(move || {
            let stats = &shared.stats;
            let options = &shared.options;
            loop {
                match socket.recv() {
                    Ok(wire) => {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        let size = wire.name.len() + wire.payload.len();
                        let behind = bus.backlog() >= options.incoming_events
                            || bus.remote_backlog_bytes() + size > options.incoming_bytes;
                        if behind && !crate::config::is_control_event(&wire.name) {
                            Shared::count_drop(
                                &stats.dropped_incoming,
                                &format!(
                                    "this process is too far behind ({} events or {} bytes from other processes waiting); incoming event dropped",
                                    options.incoming_events, options.incoming_bytes
                                ),
                                &wire.name,
                            );
                            continue;
                        }
                        bus.deliver(Event::from_remote(wire.name, wire.payload));
                    }
                    Err(IpcError::Decode(error)) => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "a message in the events group is not an event; dropped");
                    }
                    Err(error) => {
                        let mut out = shared.out.lock();
                        if out.connection == connection && !out.closing {
                            out.broken = true;
                            if !matches!(error, IpcError::Closed) {
                                out.last_error = Some(error.to_string());
                            }
                        }
                        drop(out);
                        shared.changed.notify_all();
                        return;
                    }
                }
            }
        })
}

/// The link thread's state.
struct Link {
    shared: Arc<Shared>,
    bus: EventBus,
    server_pid: u32,
}

impl Link {
    fn run(
        mut self,
        mut socket: GroupSocket<WireEvent>,
        mut receiver: std::thread::JoinHandle<()>,
    ) {
        let mut connection = 1;
        loop {
            let closed = self.send_until_broken(&socket);
            socket.close();
            let _ = receiver.join();
            if closed {
                return;
            }
            let waiting = {
                let mut out = self.shared.out.lock();
                out.socket = None;
                out.broken = false;
                out.down_since = Some(Instant::now());
                out.queue.len() as u64
            };
            if ipc::shutting_down() {
                tracing::debug!("IPC connection closed at shutdown");
            } else {
                tracing::warn!(
                    server_pid = self.server_pid,
                    waiting,
                    "IPC link lost (server pid {}); reconnecting. Events wait in a buffer of {} events / {} bytes until it is back",
                    self.server_pid,
                    self.shared.options.buffer_events,
                    self.shared.options.buffer_bytes
                );
            }
            self.bus.notify_local(
                LINK_LOST_EVENT,
                IpcLinkLost {
                    server_pid: self.server_pid,
                    waiting,
                },
            );
            let Some((next, welcome)) = self.reconnect() else {
                return;
            };
            connection += 1;
            socket = next;
            // Installed before its receiver starts: a connection that dies
            // at once is reported as broken, never left looking up.
            let outage = self.install(&socket, connection);
            receiver = match spawn_receiver(&self.bus, &self.shared, socket.clone(), connection) {
                Ok(receiver) => receiver,
                Err(error) => {
                    tracing::error!(%error, "cannot start the IPC receiver; events stay local");
                    return;
                }
            };
            self.rejoined(outage, &welcome);
        }
    }

    /// Connects again, with a jittered back-off; `None` once closing.
    fn reconnect(&self) -> Option<(GroupSocket<WireEvent>, ipc::Welcome)> {
        use backon::BackoffBuilder as _;
        let mut delays = backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(10))
            // The jitter adds up to as much again.
            .with_max_delay(self.shared.options.max_reconnect_delay / 2)
            .without_max_times()
            .build();
        let mut logged = false;
        loop {
            if self.shared.out.lock().closing {
                return None;
            }
            match ipc::join::<WireEvent>(EVENTS_GROUP, true, ipc::JOIN_TIMEOUT) {
                Ok(joined) => return Some(joined),
                Err(error) => {
                    if !logged && !ipc::shutting_down() {
                        tracing::warn!(%error, "IPC server not reachable yet; still trying");
                        logged = true;
                    }
                    let delay = delays
                        .next()
                        .unwrap_or(self.shared.options.max_reconnect_delay);
                    let deadline = Instant::now() + delay;
                    let mut out = self.shared.out.lock();
                    out.last_error = Some(error.to_string());
                    // Events buffered meanwhile wake this too: only a close
                    // cuts the wait short.
                    while !out.closing
                        && !self
                            .shared
                            .changed
                            .wait_until(&mut out, deadline)
                            .timed_out()
                    {}
                }
            }
        }
    }

    /// Makes `socket` the link's connection; what the outage cost: (how
    /// long, events buffered, events dropped) since the last rejoin.
    fn install(&self, socket: &GroupSocket<WireEvent>, connection: u64) -> (Duration, u64, u64) {
        let shared = &self.shared;
        shared
            .max_message
            .store(socket.max_message(), Ordering::Relaxed);
        let mut out = shared.out.lock();
        out.socket = Some(socket.clone());
        out.connection = connection;
        out.broken = false;
        out.last_error = None;
        let down = out
            .down_since
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let buffered = std::mem::take(&mut out.outage_buffered);
        let dropped = std::mem::take(&mut out.outage_dropped);
        (down, buffered, dropped)
    }

    fn rejoined(
        &mut self,
        (down, buffered, dropped): (Duration, u64, u64),
        welcome: &ipc::Welcome,
    ) {
        let shared = &self.shared;
        shared.changed.notify_all();
        shared.stats.rejoins.fetch_add(1, Ordering::Relaxed);
        let previous = std::mem::replace(&mut self.server_pid, welcome.server_pid);
        if let Some(missed) = welcome.missed {
            shared.stats.missed.fetch_add(missed, Ordering::Relaxed);
            tracing::warn!(
                server_pid = welcome.server_pid,
                missed,
                "rejoined the IPC group after {down:.1?}: the server had cut this process off for not reading its events in time, and discarded {missed} of them"
            );
        } else {
            tracing::warn!(
                server_pid = welcome.server_pid,
                previous_server_pid = previous,
                buffered,
                dropped,
                replayed = welcome.replayed,
                "rejoined the IPC group after {down:.1?} (server pid {previous} -> {}): {buffered} events buffered meanwhile are sent now, {dropped} were dropped; events other processes sent while this one was away are lost to it, except the {} the restarted server replayed",
                welcome.server_pid,
                welcome.replayed
            );
        }
        self.bus.notify_local(
            LINK_REJOINED_EVENT,
            IpcRejoined {
                down_ms: down.as_millis() as u64,
                server_pid: welcome.server_pid,
                previous_server_pid: previous,
                cut_off_missed: welcome.missed,
                replayed: welcome.replayed,
                buffered,
                dropped,
            },
        );
    }

    /// Sends what the fast path could not, in order, until the connection
    /// breaks (`false`) or the link closes (`true`: what was waiting has
    /// been sent, for up to two seconds).
    fn send_until_broken(&self, socket: &GroupSocket<WireEvent>) -> bool {
        let shared = &self.shared;
        let mut closing_deadline = None;
        let mut out = shared.out.lock();
        loop {
            if out.broken {
                return false;
            }
            if out.closing {
                let deadline = *closing_deadline
                    .get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
                if out.queue.is_empty() || Instant::now() >= deadline {
                    if !out.queue.is_empty() {
                        tracing::warn!(
                            waiting = out.queue.len(),
                            "IPC link closed with events not sent"
                        );
                    }
                    return true;
                }
            }
            let Some(wire) = out.queue.pop_front() else {
                shared.changed.wait(&mut out);
                continue;
            };
            out.sending = true;
            drop(out);
            let sent = socket.send_bytes(&wire[1..]);
            out = shared.out.lock();
            out.sending = false;
            match sent {
                Ok(()) => {
                    out.bytes -= wire.len();
                    shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(IpcError::Closed) | Err(IpcError::Io(_)) => {
                    // Not sent: first in line on the next connection.
                    out.queue.push_front(wire);
                    out.broken = true;
                }
                Err(error) => {
                    out.bytes -= wire.len();
                    tracing::error!(%error, "event not sent to other processes");
                }
            }
        }
    }
}

/// [`EventBus::enable_ipc`] for the global bus, once: later calls return
/// the same link.
pub fn enable_ipc() -> Result<&'static IpcEvents, IpcError> {
    enable_ipc_with(IpcOptions::default())
}

static LINK: once_cell::sync::OnceCell<IpcEvents> = once_cell::sync::OnceCell::new();

/// [`EventBus::enable_ipc_with`] for the global bus, once: later calls
/// return the same link (and ignore their options).
pub fn enable_ipc_with(options: IpcOptions) -> Result<&'static IpcEvents, IpcError> {
    LINK.get_or_try_init(|| super::bus().enable_ipc_with(options))
}

/// The global bus's IPC link, if [`enable_ipc`] made one.
pub fn ipc_link() -> Option<&'static IpcEvents> {
    LINK.get()
}
