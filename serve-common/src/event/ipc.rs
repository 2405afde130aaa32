//! Events across the service's processes, over [`crate::ipc`].
//!
//! [`EventBus::enable_ipc`] joins the group [`EVENTS_GROUP`] and makes the
//! connection the bus's transport: every event notified in this process
//! that is not local-only goes to every other process of the service, once;
//! events from them are delivered here through [`EventBus::deliver`] (not
//! sent back). `register` stays per process.
//!
//! Two threads keep the bus and the socket apart:
//!
//! - the sender takes events from a queue of [`OUTGOING_CAPACITY`] events,
//!   so a slow server never blocks the dispatcher. When the queue is full,
//!   the event is not sent: counted in [`IpcEvents::dropped_outgoing`] and
//!   logged (the first time, then at every power of two);
//! - the receiver reads the socket and hands events to the bus, so a slow
//!   handler never stalls the socket. When the bus already has
//!   [`INCOMING_BACKLOG`] events waiting, an incoming event is dropped the
//!   same way ([`IpcEvents::dropped_incoming`]). A message that is not an
//!   event is logged and skipped ([`IpcEvents::malformed`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Event, EventBus, EventTransport};
use crate::ipc::{self, GroupSocket, IpcError};

/// The IPC group events travel in.
pub const EVENTS_GROUP: &str = "serve-common.events";
/// Events waiting to be sent, at most.
pub const OUTGOING_CAPACITY: usize = 65_536;
/// Events waiting in the bus beyond which incoming ones are dropped.
pub const INCOMING_BACKLOG: u64 = 1_000_000;

#[derive(Serialize, Deserialize)]
struct WireEvent {
    name: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_outgoing: AtomicU64,
    dropped_incoming: AtomicU64,
    malformed: AtomicU64,
}

fn count_drop(counter: &AtomicU64, what: &str, event: &str) {
    super::count_drop(
        counter,
        &format_args!("IPC event queue full: {what}"),
        event,
    );
}

struct IpcTransport {
    queue: SyncSender<WireEvent>,
    stats: Arc<Stats>,
}

impl EventTransport for IpcTransport {
    fn publish(&self, event: &Event) {
        let payload = match event.encode_payload() {
            Ok(payload) => payload.to_vec(),
            Err(error) => {
                tracing::error!(%error, "event not sent to other processes");
                return;
            }
        };
        let wire = WireEvent {
            name: event.name().to_owned(),
            payload,
        };
        match self.queue.try_send(wire) {
            Ok(()) => {}
            Err(TrySendError::Full(wire)) => {
                count_drop(&self.stats.dropped_outgoing, "outgoing", &wire.name)
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!(event = event.name(), "IPC sender gone; event stays local");
            }
        }
    }
}

/// A bus's IPC link, from [`EventBus::enable_ipc`]; its counters.
pub struct IpcEvents {
    socket: GroupSocket<WireEvent>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for IpcEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcEvents")
            .field("sent", &self.sent())
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl IpcEvents {
    /// Events sent to the group.
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    /// Events received from the group.
    pub fn received(&self) -> u64 {
        self.stats.received.load(Ordering::Relaxed)
    }

    /// Events not sent because the outgoing queue was full.
    pub fn dropped_outgoing(&self) -> u64 {
        self.stats.dropped_outgoing.load(Ordering::Relaxed)
    }

    /// Events received but dropped because the bus was too far behind.
    pub fn dropped_incoming(&self) -> u64 {
        self.stats.dropped_incoming.load(Ordering::Relaxed)
    }

    /// Messages received that were not events.
    pub fn malformed(&self) -> u64 {
        self.stats.malformed.load(Ordering::Relaxed)
    }

    /// Leaves the group: events stay local from now on.
    pub fn close(&self) {
        self.socket.close();
    }
}

impl EventBus {
    /// Carries this bus's events to and from the service's other processes
    /// (see the [event module docs](crate::event)). IPC must be set up ([`ipc::start`] or
    /// [`ipc::setup`]).
    /// A bus has one link: a second call is [`IpcError::AlreadyEnabled`]
    /// (two would deliver every event twice).
    pub fn enable_ipc(&self) -> Result<IpcEvents, IpcError> {
        if !self.claim_ipc_link() {
            return Err(IpcError::AlreadyEnabled);
        }
        let linked = self.link_ipc();
        if linked.is_err() {
            self.release_ipc_link();
        }
        linked
    }

    fn link_ipc(&self) -> Result<IpcEvents, IpcError> {
        let socket = ipc::join_group::<WireEvent>(EVENTS_GROUP)?;
        let stats = Arc::new(Stats::default());
        let (queue, outgoing) = mpsc::sync_channel::<WireEvent>(OUTGOING_CAPACITY);

        let sender = socket.clone();
        let sender_stats = stats.clone();
        std::thread::Builder::new()
            .name("serve-common-ipc-send".into())
            .spawn(move || {
                for wire in outgoing {
                    match sender.send(&wire) {
                        Ok(()) => {
                            sender_stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(IpcError::Closed) => {
                            tracing::error!("IPC connection closed; events stay local");
                            return;
                        }
                        Err(error) => tracing::error!(event = %wire.name, %error, "event not sent"),
                    }
                }
            })?;

        let receiver = socket.clone();
        let receiver_stats = stats.clone();
        let bus = self.clone();
        std::thread::Builder::new()
            .name("serve-common-ipc-recv".into())
            .spawn(move || loop {
                match receiver.recv() {
                    Ok(wire) => {
                        receiver_stats.received.fetch_add(1, Ordering::Relaxed);
                        if bus.backlog() >= INCOMING_BACKLOG {
                            count_drop(&receiver_stats.dropped_incoming, "incoming", &wire.name);
                            continue;
                        }
                        bus.deliver(Event::from_remote(wire.name, wire.payload));
                    }
                    Err(IpcError::Decode(error)) => {
                        receiver_stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "a message in the events group is not an event; dropped");
                    }
                    Err(IpcError::Closed) if crate::ipc::shutting_down() => {
                        tracing::debug!("IPC connection closed at shutdown");
                        return;
                    }
                    Err(IpcError::Closed) => {
                        tracing::warn!("IPC connection closed; no more events from other processes");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, "IPC receive failed; no more events from other processes");
                        return;
                    }
                }
            })?;

        self.set_transport(Some(Arc::new(IpcTransport {
            queue,
            stats: stats.clone(),
        })));
        Ok(IpcEvents { socket, stats })
    }
}

/// [`EventBus::enable_ipc`] for the global bus, once: later calls return
/// the same link.
pub fn enable_ipc() -> Result<&'static IpcEvents, IpcError> {
    static LINK: once_cell::sync::OnceCell<IpcEvents> = once_cell::sync::OnceCell::new();
    LINK.get_or_try_init(|| super::bus().enable_ipc())
}
