//! One-per-service handlers over IPC: each group of them is an IPC queue
//! group, whose server hands every message to one member.
//!
//! A process joins the queue group of every one-per-service group it has
//! registered: as a member when the handlers run here, to send only when
//! they do not (a supervisor's). The notifier routes: an event whose name
//! matches one of its groups' handlers is sent to that queue group too
//! (and not run here through the normal dispatch). A manager thread joins,
//! rejoins after a server restart, and leaves the groups as registrations
//! change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::ipc::WireEvent;
use super::{Event, EventBus};
use crate::ipc::{self, GroupSocket, IpcError};

/// The IPC queue group of a one-per-service group.
fn queue_group(key: &str) -> String {
    let hash = super::group_hash(key);
    format!(
        "{}{}.{hash:016x}",
        ipc::QUEUE_GROUP_PREFIX,
        super::EVENTS_GROUP
    )
}

/// Tells the server one more message handed here is handled.
fn acknowledge(socket: &GroupSocket<WireEvent>) {
    let mut ack = [0; 9];
    ack[0] = ipc::QUEUE_ACK;
    ack[1..].copy_from_slice(&1_u64.to_le_bytes());
    if let Err(error) = socket.send_bytes(&ack) {
        // The server counts it as lost when this member leaves.
        tracing::debug!(%error, "a one-per-service acknowledgement was not sent");
    }
}

struct GroupLink {
    socket: GroupSocket<WireEvent>,
    member: bool,
    broken: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    links: HashMap<Arc<str>, GroupLink>,
    closing: bool,
}

/// The queue groups of a bus's one-per-service handlers.
pub(crate) struct Groups {
    bus: EventBus,
    state: Mutex<State>,
    /// Wakes the manager: registrations changed, a link broke, closing.
    changed: Condvar,
    /// Whether any group is registered (checked without the lock).
    any: AtomicBool,
    /// Events not handed to their queue group (no connection to it).
    dropped: AtomicU64,
}

impl Groups {
    /// Starts the manager thread for `bus`.
    pub(crate) fn start(bus: &EventBus) -> std::io::Result<Arc<Self>> {
        let groups = Arc::new(Self {
            bus: bus.clone(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            any: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        // The groups registered by now are joined before the first event
        // is routed; later changes are the manager's.
        groups.sync();
        let manager = groups.clone();
        std::thread::Builder::new()
            .name("serve-common-ipc-groups".into())
            .spawn(move || manager.manage())?;
        let hook = Arc::downgrade(&groups);
        bus.set_interest_hook(Some(Arc::new(move || {
            if let Some(groups) = hook.upgrade() {
                // Routed from now on (a group without a connection yet is
                // counted as dropped, never run in every process).
                groups.any.store(true, Ordering::Relaxed);
                groups.changed.notify_all();
            }
        })));
        Ok(groups)
    }

    /// Events not handed to their group.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Leaves every group; the manager returns.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closing = true;
        for (_, link) in state.links.drain() {
            link.socket.close();
        }
        self.changed.notify_all();
    }

    /// Sends `event` (encoded as `wire`) to the queue group of each
    /// one-per-service group whose handlers match it. Runs on the
    /// dispatcher thread: the send is to the local IPC server, which reads
    /// at once.
    pub(crate) fn route(&self, name: &str, wire: &[u8]) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        for key in self.bus.shared_keys_for(name) {
            let socket = {
                let state = self.state.lock();
                state
                    .links
                    .get(&key)
                    .filter(|link| !link.broken.load(Ordering::Relaxed))
                    .map(|link| (link.socket.clone(), link.broken.clone()))
            };
            let sent = match &socket {
                Some((socket, _)) => socket.send_bytes(wire),
                None => Err(IpcError::Closed),
            };
            if let Err(error) = sent {
                if let (Some((_, broken)), IpcError::Closed | IpcError::Io(_)) = (socket, &error) {
                    broken.store(true, Ordering::Relaxed);
                    self.changed.notify_all();
                }
                super::count_drop(
                    &self.dropped,
                    &format_args!(
                        "IPC link: no connection to a one-per-service group ({error}); event not handed to it"
                    ),
                    name,
                );
            }
        }
    }

    /// Joins, rejoins and leaves groups until closed.
    fn manage(self: Arc<Self>) {
        let mut failures = 0_u32;
        loop {
            let failed = match self.sync() {
                Some(failed) => failed,
                None => return,
            };
            failures = if failed {
                failures.saturating_add(1)
            } else {
                0
            };
            let mut state = self.state.lock();
            if state.closing {
                return;
            }
            let broken = state
                .links
                .values()
                .any(|link| link.broken.load(Ordering::Relaxed));
            if !broken {
                // A failed join is tried again soon; otherwise, the next
                // change wakes this.
                let wait = if failed {
                    super::jittered(Duration::from_millis(20) * (1 << failures.min(5)))
                } else {
                    Duration::from_secs(5)
                };
                let deadline = Instant::now() + wait;
                self.changed.wait_until(&mut state, deadline);
            }
        }
    }

    /// Makes the links match the registrations: whether a join failed, or
    /// `None` once closing.
    fn sync(self: &Arc<Self>) -> Option<bool> {
        let wanted = self.bus.shared_keys();
        self.any.store(!wanted.is_empty(), Ordering::Relaxed);
        let mut missing = Vec::new();
        {
            let mut state = self.state.lock();
            if state.closing {
                return None;
            }
            state.links.retain(|key, link| {
                let keep = !link.broken.load(Ordering::Relaxed)
                    && wanted
                        .iter()
                        .any(|(k, member)| k == key && *member == link.member);
                if !keep {
                    link.socket.close();
                }
                keep
            });
            for (key, member) in &wanted {
                if !state.links.contains_key(key) {
                    missing.push((key.clone(), *member));
                }
            }
        }
        let mut failed = false;
        for (key, member) in missing {
            match ipc::join_as::<WireEvent>(&queue_group(&key), false, !member, ipc::JOIN_TIMEOUT) {
                Ok((socket, _)) => {
                    let broken = Arc::new(AtomicBool::new(false));
                    if member {
                        self.spawn_receiver(key.clone(), socket.clone(), broken.clone());
                    }
                    let mut state = self.state.lock();
                    if state.closing {
                        socket.close();
                        return None;
                    }
                    tracing::debug!(group = %key, member, "joined a one-per-service group");
                    state.links.insert(
                        key,
                        GroupLink {
                            socket,
                            member,
                            broken,
                        },
                    );
                }
                Err(error) => {
                    if !ipc::shutting_down() {
                        tracing::debug!(group = %key, %error, "cannot join a one-per-service group over IPC yet; trying again");
                    }
                    failed = true;
                }
            }
        }
        Some(failed)
    }

    fn spawn_receiver(
        self: &Arc<Self>,
        key: Arc<str>,
        socket: GroupSocket<WireEvent>,
        broken: Arc<AtomicBool>,
    ) {
        let groups = Arc::downgrade(self);
        let bus = self.bus.clone();
        let spawned = std::thread::Builder::new()
            .name("serve-common-ipc-group".into())
            .spawn(move || loop {
                match socket.recv() {
                    Ok(wire) => {
                        // Handled: the server counts what a member that
                        // dies leaves unhandled.
                        let acker = socket.clone();
                        let name = wire.name.clone();
                        bus.deliver_shared(
                            Event::from_remote(wire.name, wire.payload),
                            key.clone(),
                            Box::new(move |outcome| {
                                if matches!(outcome, super::SharedOutcome::NotHere) {
                                    tracing::warn!(event = %name, "a one-per-service event reached a process that no longer runs its handlers: lost");
                                }
                                acknowledge(&acker);
                            }),
                        )
                    }
                    Err(IpcError::Decode(error)) => {
                        tracing::warn!(%error, "a message in a one-per-service group is not an event; dropped");
                        // Taken care of: not counted as lost.
                        acknowledge(&socket);
                    }
                    Err(_) => {
                        broken.store(true, Ordering::Relaxed);
                        if let Some(groups) = groups.upgrade() {
                            groups.changed.notify_all();
                        }
                        return;
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a one-per-service group's receiver");
        }
    }
}
