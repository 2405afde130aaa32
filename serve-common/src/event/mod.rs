//! Events: register functions for names or patterns of names, and call them
//! by notifying events. The Python original's `callback` module.
//!
//! ```
//! use std::time::Duration;
//! use serve_common::event::{EventBus, Event};
//!
//! let bus = EventBus::new();
//! bus.on("job.*.done").ack().call_typed(|name: &str, job: &u64| {
//!     println!("{name}: job {job}");
//! })?;
//! // Registers the wait for `completed:job.7.done`, notifies, waits.
//! let ack = bus.notify_and_wait("job.7.done", 7_u64, None, Duration::from_secs(5))?;
//! assert_eq!(ack.name(), "completed:job.7.done");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Model
//!
//! - [`notify`](EventBus::notify) enqueues and returns. One dispatcher thread
//!   per bus takes events in order and runs the matching handlers in
//!   registration order. A handler that returns `Err` or panics is logged
//!   with the event name (target `serve_common::event`) and the loop goes on.
//! - Patterns: exact names, globs and full-match regexes ([`EventPattern`]).
//!   Exact names are found in a hash map; globs and regexes are compiled into
//!   one regex set, rebuilt lazily after registrations change, with a bounded
//!   per-name cache of matches.
//! - Payloads are any `Serialize + Send + Sync + 'static` value. In-process
//!   delivery hands the handler the notifier's value by reference, never
//!   serialized. A handler asking for another type gets a serde conversion
//!   (through CBOR's data model), exactly as it would for an event from
//!   another process. A payload it cannot take is logged, not a crash.
//! - Events are local-only ([`notify_local`](EventBus::notify_local), config
//!   reloads) or not. A bus with an [`EventTransport`] hands every event
//!   notified here that is not local-only to it; events from elsewhere come
//!   in through [`EventBus::deliver`] and are not handed back (no echo).
//! - The queue is unbounded: `notify` never blocks and never drops.
//! - The global bus ([`bus`]) also runs the handlers of
//!   [`#[on_event]`](macro@crate::on_event), registered when it is created,
//!   in the order of their module path and line.
//! - Creating processes by `fork` without `exec` after the bus started is
//!   not supported (its thread does not survive a fork).
//!
//! # Async handlers
//!
//! With the `tokio` feature (on by default), a handler may be an `async
//! fn`: `#[on_event("job.submitted")] async fn run(job: &Job)`, or
//! [`HandlerBuilder::call_async`]. The dispatcher makes the future (the
//! payload is read inside it) and hands it to a tokio runtime the bus owns:
//! one worker thread named `serve-common-async-handlers`, made on the
//! first async run, so the service needs no runtime of its own and an
//! actix worker's runtime is never borrowed. Then:
//!
//! - the dispatcher does not wait: a slow future delays neither the events
//!   after it nor the sync handlers (which still run on the dispatcher);
//! - async runs start in the order they were handed over (registration
//!   order within an event, event order across events); they then run
//!   concurrently on the one worker, so a handler that blocks the thread
//!   (CPU work, blocking I/O) should use `tokio::task::spawn_blocking`;
//! - `once` unregisters at the first match, as for a sync handler; `ack`
//!   notifies `completed:<event>` when the future finishes; an `Err` or a
//!   panic inside the future is logged with the event name and counted,
//!   and the acknowledgement carries it; a one-per-service event counts as
//!   handled (to NATS or the IPC server) when its future finishes;
//! - bounded: at most `events.async_max_in_flight` runs (default
//!   [`DEFAULT_MAX_IN_FLIGHT`]) are in flight per bus. At the cap the
//!   dispatcher waits for room (back-pressure), up to
//!   `events.async_wait_ms` (default 1,000 ms); after that the new run is
//!   dropped: counted ([`EventBus::async_handlers_dropped`]), logged at
//!   ERROR, and acknowledged with the error. The wait is bounded so that
//!   handlers awaiting other events cannot deadlock the bus.
//!   [`EventBus::limit_async_handlers`] sets both on any bus.
//!
//! A future must be `Send` (the runtime may move it); the compiler says so
//! on the `async` keyword. Without the `tokio` feature, `#[on_event]` on
//! an `async fn` is a compile error naming the feature.
//!
//! # Across processes: the IPC link
//!
//! The link is a small state machine owned by one thread: connecting, up,
//! down (reconnecting with a jittered back-off, up to
//! [`IpcOptions::max_reconnect_delay`]), closed.
//!
//! - **Up**: an event goes straight to the socket from the dispatcher
//!   thread when nothing is waiting before it (no thread hand-off); else it
//!   joins the outgoing buffer, which the link thread sends in order.
//! - **Down** (the IPC server died, or cut this process off for not
//!   reading): events wait in the outgoing buffer, bounded by
//!   [`IpcOptions::buffer_events`] and [`IpcOptions::buffer_bytes`]; what
//!   exceeds the bound is dropped, counted ([`IpcEvents::dropped_outgoing`])
//!   and logged at WARN, except the config's own events
//!   ([`crate::config::SET_EVENT`], [`crate::config::SYNC_EVENT`]), which
//!   no bound drops, outgoing or incoming: a lost runtime set would leave
//!   the processes disagreeing for good. The link logs the loss at WARN, notifies
//!   [`LINK_LOST_EVENT`] here, and reconnects; on rejoining it sends the
//!   buffer once, logs what the outage cost, and notifies
//!   [`LINK_REJOINED_EVENT`] here (the config answers it by asking the
//!   others for the runtime sets it missed, so every process converges).
//!   The process that started the IPC server restarts it (see
//!   [`ipc::start_with`](crate::ipc::start_with)).
//! - The [`health`](IpcEvents::health) check fails once the link has been
//!   down longer than [`IpcOptions::health_grace`]; `#[serve_common::main]`
//!   registers it as `ipc` in `/manage/health`.
//!
//! What is lost, and where it is counted:
//!
//! - Events other processes sent while this one was away are lost to it.
//!   A restarted server replays what it forwarded in its first moments
//!   ([`ServerOptions::rejoin_window`](crate::ipc::ServerOptions::rejoin_window))
//!   to members that rejoin late, so the events buffered during an outage
//!   reach every process that comes back in time. A member cut off for not reading learns, when it
//!   rejoins, how many messages the server discarded for it
//!   ([`IpcEvents::missed`]); it logs that once.
//! - Events written to the socket just before the server died, which it
//!   had not forwarded yet, are lost (nothing acknowledges them).
//! - The receiver hands events to the bus, so a slow handler never stalls
//!   the socket. When the bus already has [`IpcOptions::incoming_events`]
//!   events or [`IpcOptions::incoming_bytes`] bytes from other processes
//!   waiting, an incoming event is dropped ([`IpcEvents::dropped_incoming`],
//!   logged). A message that is not an event is logged and skipped
//!   ([`IpcEvents::malformed`]).
//!
//! Drops are logged the first time and then at every power of two. The
//! main macro reads the link's options from the `[events.ipc]` config
//! section ([`IpcOptions::from_config`]).
//!
//! # Which processes run handlers
//!
//! Registrations are per process: a handler runs in each process that
//! registered it, for the events that process notifies and for the ones
//! that reach it from the others (over IPC or NATS).
//!
//! With worker processes (`server.processes = N > 1`, see
//! [`default::actix`](crate::default::actix)), every process runs `main`,
//! so every process registers the same handlers, but one of them is the
//! supervisor: it starts and watches the workers and serves no requests.
//! The supervisor's global bus runs only:
//!
//! - serve-common's own handlers: it applies config changes (file edits,
//!   runtime sets from the workers) and follows log levels like every
//!   process;
//! - handlers registered with [`HandlerBuilder::in_supervisor`], or
//!   `#[on_event("...", supervisor)]`;
//! - waits ([`wait_for`](EventBus::wait_for), [`notify_and_wait`](EventBus::notify_and_wait)).
//!
//! So an event runs an application handler once per worker: N times, not
//! N + 1. A handler with a side effect that must happen once per service
//! (an e-mail, a row written, a job run) asks for it: see below.
//!
//! In a single-process service, and on buses made with [`EventBus::new`],
//! every handler runs.
//!
//! # One per service
//!
//! A handler registered with [`HandlerBuilder::one_per_service`] (or
//! `#[on_event("job.submitted", one_per_service)]`) runs in one process
//! of the service for each event, the way a work queue hands each job to
//! one worker. The registrations with the same pattern and label (an
//! `#[on_event]` function's path) in the service's processes form one
//! group, and the link picks the process:
//!
//! | link | who picks | a process that dies mid-handler |
//! |---|---|---|
//! | NATS JetStream | a durable consumer the group shares | loses nothing: the server hands the event to another process after `events.nats.ack_wait_s` (default 30 s) without an acknowledgement; what the dead process had handled and not yet acknowledged runs twice |
//! | NATS at most once | a queue group | loses what the server had sent it |
//! | IPC | the IPC server, in turn | loses what the server had handed it and it had not handled: counted and logged by the server (`lost=N`) |
//!
//! The process that notifies may be the one picked. Over IPC the notifier
//! routes the event to each group whose handlers match it in its own
//! registry, so register one-per-service handlers in every process (the
//! `#[on_event]` ones are); a supervisor routes without taking any. A
//! handler that fails or panics is logged and the event counts as handled
//! (it is not handed to another process). A local-only event, and any
//! event on a bus without a link, runs its one-per-service handlers here.
//!
//! Over JetStream, `ack_wait_s` runs from when the server hands the event
//! out: a process takes 16 at a time, so keep it above 16 times the
//! handler's longest run, or a slow event is handed to another process too.
//! An event whose handler ran while the process was stopping, and whose
//! acknowledgement did not leave before the link closed, runs again
//! elsewhere. A group whose handler is gone from every process is
//! forgotten by the server a day later; a group made for the first time
//! takes the events from where the process that made it started reading.

#[cfg(feature = "tokio")]
mod async_handlers;
mod ipc;
mod ipc_groups;
#[cfg(feature = "nats")]
pub mod nats;
mod pattern;
mod payload;
mod registry;
mod wait;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::{Mutex, MutexGuard, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(feature = "tokio")]
pub use self::async_handlers::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_WAIT};
pub use self::ipc::{
    enable_ipc, enable_ipc_with, ipc_link, Delivery, EventsSettings, IpcEvents, IpcLinkLost,
    IpcOptions, IpcRejoined, IpcSettings, NatsSettings, NatsStreamSettings, EVENTS_GROUP,
    INCOMING_BACKLOG, LINK_LOST_EVENT, LINK_REJOINED_EVENT, OUTGOING_CAPACITY,
};
#[cfg(feature = "nats")]
pub use self::nats::{enable_nats, NatsEvents, NatsOptions};
pub use self::pattern::{EventPattern, PatternError};
use self::payload::PayloadRepr;
pub use self::payload::{Payload, PayloadError};
use self::registry::{Ack, Entry, Registry};
use self::wait::WaitSlot;
pub use self::wait::{EventWaiter, WaitError};
use crate::HandlerOutcome;

/// Where an event was notified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// In this process.
    Local,
    /// In another process; came in through [`EventBus::deliver`].
    Remote,
}

/// An event: a name, a payload, and whether it stays in this process.
///
/// Cloning is cheap (the name and payload are shared).
#[derive(Clone)]
pub struct Event {
    name: Arc<str>,
    payload: PayloadRepr,
    local_only: bool,
    origin: Origin,
}

impl Event {
    /// A local event that transports may carry to other processes.
    pub fn new<T: Serialize + Send + Sync + 'static>(
        name: impl Into<Arc<str>>,
        payload: T,
    ) -> Self {
        Self {
            name: name.into(),
            payload: PayloadRepr::Local(Arc::new(payload)),
            local_only: false,
            origin: Origin::Local,
        }
    }

    /// An event received from another process: `encoded` is the payload in
    /// CBOR (what [`encode_payload`](Self::encode_payload) produced there).
    pub fn from_remote(name: impl Into<Arc<str>>, encoded: impl Into<Arc<[u8]>>) -> Self {
        Self::from_wire(name.into(), bytes::Bytes::from_owner(encoded.into()))
    }

    /// [`from_remote`](Self::from_remote) without a copy: the payload
    /// shares the buffer it was read into.
    pub(crate) fn from_wire(name: Arc<str>, encoded: bytes::Bytes) -> Self {
        Self {
            name,
            payload: PayloadRepr::Encoded(encoded),
            local_only: false,
            origin: Origin::Remote,
        }
    }

    /// Marks the event as staying in this process (or not).
    pub fn with_local_only(mut self, local_only: bool) -> Self {
        self.local_only = local_only;
        self
    }

    /// The event's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether transports must not carry this event to other processes.
    pub fn is_local_only(&self) -> bool {
        self.local_only
    }

    /// Where the event was notified.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The payload read as `T`: borrowed when the notifier sent a `T` in
    /// this process, else converted through serde.
    pub fn payload<T: DeserializeOwned + 'static>(&self) -> Result<Payload<'_, T>, PayloadError> {
        self.payload.read(&self.name)
    }

    /// What a remote event weighs in a backlog: its name and its encoded
    /// payload (0 for a local event's payload, which is not encoded).
    fn remote_size(&self) -> usize {
        self.name.len()
            + match &self.payload {
                PayloadRepr::Encoded(bytes) => bytes.len(),
                _ => 0,
            }
    }

    /// The payload in CBOR, for transports.
    pub fn encode_payload(&self) -> Result<Arc<[u8]>, PayloadError> {
        self.payload.encode().map_err(|message| PayloadError {
            event: self.name.to_string(),
            expected: "CBOR",
            found: self.payload.describe(),
            message,
        })
    }

    /// [`encode_payload`](Self::encode_payload), appended to `out` (a
    /// transport's envelope) instead of a buffer of its own.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn encode_payload_into(&self, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        self.payload
            .encode_into(out)
            .map_err(|message| PayloadError {
                event: self.name.to_string(),
                expected: "CBOR",
                found: self.payload.describe(),
                message,
            })
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("payload", &self.payload.describe())
            .field("local_only", &self.local_only)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The payload of an acknowledgement (`completed:<event>` or the name a
/// registration chose), notified after the handler returned, whether it
/// succeeded or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The event the handler ran for.
    pub event: String,
    /// The handler's error or panic message, if it failed.
    pub error: Option<String>,
}

/// Carries events to other processes (IPC, NATS). The bus calls
/// [`publish`](Self::publish) on its dispatcher thread, before the local
/// handlers run, for every event notified in this process that is not
/// local-only. Keep it quick: enqueue, do not block.
pub trait EventTransport: Send + Sync + 'static {
    /// Sends `event` on; use [`Event::encode_payload`] for the payload.
    fn publish(&self, event: &Event);

    /// Whether an event named `event` whose payload encodes to
    /// `encoded_len` bytes can be carried ([`EventBus::try_notify`] asks).
    fn check(&self, event: &str, encoded_len: usize) -> Result<(), String> {
        let _ = (event, encoded_len);
        Ok(())
    }
}

/// An event [`EventBus::try_notify`] refused.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The payload does not encode.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The transport cannot carry it (too large, for one).
    #[error("{0}")]
    Transport(String),
}

/// Counts an event, unless it is one of the metrics' own (a scrape's
/// requests and answers between processes).
fn count_event(counter: &AtomicU64, name: &str) {
    if !name.starts_with("serve_common.metrics.") {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bus's counters ([`EventBus::stats`]).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct BusStats {
    pub(crate) notified: u64,
    pub(crate) received: u64,
    pub(crate) handler_runs: u64,
    /// Errors and panics.
    pub(crate) failures: u64,
    pub(crate) panics: u64,
}

enum Item {
    Event(Event),
    Barrier(Arc<WaitSlot>),
    /// A link hands this process a one-per-service event for the handlers
    /// of one group.
    Shared(Event, Arc<str>, SharedDone),
}

/// How a one-per-service delivery ended, for the link's acknowledgement.
pub(crate) enum SharedOutcome {
    /// The group's handlers ran (a failure or a panic was logged: the
    /// event is not handed to another process for it).
    Ran,
    /// The group is here, but its patterns do not match the event (its
    /// subscription is wider than they are): nothing to run anywhere.
    NoMatch,
    /// This process has no handler of the group for this event (it was
    /// unregistered): another process should have it.
    NotHere,
}

pub(crate) type SharedDone = Box<dyn FnOnce(SharedOutcome) + Send>;

/// Tells the link how a one-per-service event went when the last run
/// holding it finished (on the dispatcher, or after an async run).
pub(crate) struct SharedGuard(Mutex<Option<(SharedDone, SharedOutcome, Arc<str>)>>);

impl Drop for SharedGuard {
    fn drop(&mut self) {
        let Some((done, outcome, name)) = self.0.lock().take() else {
            return;
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| done(outcome))) {
            tracing::error!(event = %name, panic = %panic_message(&*panic),
                "one-per-service acknowledgement panicked");
        }
    }
}

struct QueueState {
    items: VecDeque<Item>,
    idle: bool,
    stopping: bool,
}

type InboundHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// The counters the notifying threads write (`notified`, `received`,
/// `queued`) and those the dispatcher writes (`taken`, `dispatched`,
/// `handler_runs`) sit on cache lines of their own: sharing one, each event
/// moved the line between the cores twice.
pub(crate) struct Core {
    /// Written by both sides: on a line of its own too.
    queue: CachePadded<Mutex<QueueState>>,
    registry: Mutex<Registry>,
    transport: RwLock<Option<Arc<dyn EventTransport>>>,
    /// Copied on a change, so a dispatch takes them without a copy.
    inbound_hooks: RwLock<Arc<[InboundHook]>>,
    /// Called when registrations change (a transport's subscriptions).
    interest_hook: RwLock<Option<Arc<dyn Fn() + Send + Sync>>>,
    dispatcher: OnceCell<Thread>,
    failures: AtomicU64,
    dispatched: CachePadded<AtomicU64>,
    /// Events notified here, and received from other processes.
    notified: CachePadded<AtomicU64>,
    received: CachePadded<AtomicU64>,
    /// Handler calls, and those that panicked (`failures` counts errors
    /// and panics).
    handler_runs: CachePadded<AtomicU64>,
    panics: AtomicU64,
    /// Items ever queued: lets the dispatcher spin without the lock.
    queued: CachePadded<AtomicU64>,
    /// Items the dispatcher started on.
    taken: CachePadded<AtomicU64>,
    /// Whether an IPC link carries this bus's events.
    ipc_linked: std::sync::atomic::AtomicBool,
    /// False in a supervisor process: only handlers marked
    /// `in_supervisor` run.
    application_handlers: std::sync::atomic::AtomicBool,
    /// Bytes of events from other processes queued and not dispatched yet.
    remote_bytes: std::sync::atomic::AtomicUsize,
    /// Whether a link hands out the one-per-service events: then the
    /// normal dispatch skips their handlers.
    shared_routed: std::sync::atomic::AtomicBool,
    /// Itself, for the async handlers' tasks.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    me: Weak<Core>,
    /// Async handlers: the runtime and the cap.
    #[cfg(feature = "tokio")]
    asyncs: async_handlers::AsyncRunner,
}

impl Core {
    pub(crate) fn is_dispatcher_thread(&self) -> bool {
        self.dispatcher.get().map(Thread::id) == Some(thread::current().id())
    }

    /// Queues an event notified here (counted).
    fn notify(&self, event: Event) {
        count_event(&self.notified, &event.name);
        self.enqueue(Item::Event(event));
    }

    fn enqueue(&self, item: Item) {
        let wake = {
            let mut queue = self.queue.lock();
            queue.items.push_back(item);
            self.queued.fetch_add(1, Ordering::Release);
            std::mem::replace(&mut queue.idle, false)
        };
        if let (true, Some(thread)) = (wake, self.dispatcher.get()) {
            thread.unpark();
        }
    }

    fn register(
        &self,
        pattern: EventPattern,
        make: impl FnOnce(u64) -> Entry,
    ) -> Result<u64, PatternError> {
        let regex = match &pattern {
            EventPattern::Exact(_) => None,
            _ => Some(pattern.anchored_regex()?),
        };
        let prefix: Arc<str> = pattern.literal_prefix().into();
        let mut registry = self.registry.lock();
        let id = registry.next_id();
        let entry = make(id);
        match (pattern, regex) {
            (EventPattern::Exact(name), _) => registry.insert_exact(name.into(), entry),
            (_, Some(regex)) => registry.insert_pattern(regex, prefix, entry),
            (_, None) => unreachable!("non-exact patterns always have a regex"),
        }
        drop(registry);
        self.interest_changed();
        Ok(id)
    }

    /// Tells the transport (if it cares) that the registrations changed.
    fn interest_changed(&self) {
        let hook = self.interest_hook.read().clone();
        if let Some(hook) = hook {
            hook();
        }
    }

    fn run(&self) {
        let mut batch = VecDeque::new();
        let mut matched = Vec::new();
        let mut seen = 0;
        loop {
            // A short spin before sleeping: an event that follows soon (an
            // acknowledgement's waiter notifying again, a burst) is picked up
            // without the cost of waking a sleeping thread, which is tens of
            // microseconds on an idle virtual machine.
            spin_until(|| self.queued.load(Ordering::Acquire) != seen, SPIN);
            {
                let mut queue = self.queue.lock();
                while queue.items.is_empty() {
                    if queue.stopping {
                        return;
                    }
                    queue.idle = true;
                    MutexGuard::unlocked(&mut queue, thread::park);
                }
                queue.idle = false;
                seen = self.queued.load(Ordering::Acquire);
                std::mem::swap(&mut queue.items, &mut batch);
            }
            // Once a batch, not once an event.
            let transport = self.transport.read().clone();
            let hooks = self.inbound_hooks.read().clone();
            for item in batch.drain(..) {
                self.taken.fetch_add(1, Ordering::Relaxed);
                match item {
                    Item::Event(event) => {
                        self.dispatch(&event, transport.as_deref(), &hooks, &mut matched)
                    }
                    Item::Barrier(slot) => slot.fill(&Event::new("", ())),
                    Item::Shared(event, key, done) => {
                        self.dispatch_shared(&event, &key, done, &mut matched)
                    }
                }
            }
        }
    }

    fn dispatch(
        &self,
        event: &Event,
        transport: Option<&dyn EventTransport>,
        hooks: &[InboundHook],
        matched: &mut Vec<Arc<Entry>>,
    ) {
        match event.origin {
            Origin::Local if !event.local_only => {
                let published =
                    transport.map(|t| catch_unwind(AssertUnwindSafe(|| t.publish(event))));
                if let Some(Err(panic)) = published {
                    tracing::error!(event = %event.name, panic = %panic_message(&*panic),
                        "event transport panicked");
                }
            }
            Origin::Remote => {
                self.remote_bytes
                    .fetch_sub(event.remote_size(), Ordering::Relaxed);
                for hook in hooks {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(event))) {
                        tracing::error!(event = %event.name, panic = %panic_message(&*panic),
                            "inbound event hook panicked");
                    }
                }
            }
            Origin::Local => {}
        }
        let application = self.application_handlers.load(Ordering::Relaxed);
        // One-per-service handlers run where a link hands their events,
        // unless the event stays in this process: not taken here (a
        // single-use one stays registered for that).
        let routed = self.shared_routed.load(Ordering::Relaxed) && !event.local_only;
        let shared_removed = self
            .registry
            .lock()
            .collect(&event.name, matched, |e| !(routed && e.shared.is_some()));
        if shared_removed {
            self.interest_changed();
        }
        for entry in matched.drain(..) {
            if !application && !entry.in_supervisor {
                continue;
            }
            self.run_entry(&entry, event);
        }
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the handlers of the one-per-service group `key` that match
    /// `event` (only those: the event's other handlers ran at its normal
    /// delivery), then tells the link how it went.
    fn dispatch_shared(
        &self,
        event: &Event,
        key: &str,
        done: SharedDone,
        matched: &mut Vec<Arc<Entry>>,
    ) {
        self.remote_bytes
            .fetch_sub(event.remote_size(), Ordering::Relaxed);
        let application = self.application_handlers.load(Ordering::Relaxed);
        // Only the group's handlers that run here are taken (other
        // single-use handlers, waits among them, stay for the event's
        // normal delivery).
        let runs = |e: &Entry| e.shared.as_deref() == Some(key) && (application || e.in_supervisor);
        let mut registry = self.registry.lock();
        let shared_removed = registry.collect(&event.name, matched, runs);
        let outcome = if !matched.is_empty() {
            SharedOutcome::Ran
        } else if registry.has_shared(key, application) {
            // The group's filter let through an event its patterns do
            // not match: not the group's.
            SharedOutcome::NoMatch
        } else {
            SharedOutcome::NotHere
        };
        drop(registry);
        if shared_removed {
            self.interest_changed();
        }
        // The link hears how it went once every run finished: an async
        // run holds the guard until its future is done.
        let guard = Arc::new(SharedGuard(Mutex::new(Some((
            done,
            outcome,
            event.name.clone(),
        )))));
        for entry in matched.drain(..) {
            self.run_entry_held(&entry, event, Some(guard.clone()));
        }
        drop(guard);
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one handler: a failure or a panic is logged and counted, and
    /// the acknowledgement it asked for is notified. An async handler is
    /// started: its future runs on the bus's runtime, and all this
    /// happens when it finishes.
    fn run_entry(&self, entry: &Arc<Entry>, event: &Event) {
        self.run_entry_held(entry, event, None);
    }

    /// [`run_entry`](Self::run_entry), keeping `hold` alive until the run
    /// finished (an async run's future included).
    fn run_entry_held(&self, entry: &Arc<Entry>, event: &Event, hold: Option<Arc<SharedGuard>>) {
        self.handler_runs.fetch_add(1, Ordering::Relaxed);
        // Without the tokio feature the match has one arm.
        #[cfg_attr(not(feature = "tokio"), allow(clippy::infallible_destructuring_match))]
        let handler = match &entry.handler {
            registry::Handler::Sync(handler) => handler,
            #[cfg(feature = "tokio")]
            registry::Handler::Async(start) => {
                return self.start_async(entry, &**start, event, hold);
            }
        };
        let _hold = hold;
        let outcome = match catch_unwind(AssertUnwindSafe(|| handler(event))) {
            Ok(outcome) => outcome,
            Err(panic) => Err(self.panicked(&*panic)),
        };
        self.finish_run(entry, event, outcome);
    }

    /// Counts a panic; the error it becomes.
    fn panicked(&self, panic: &(dyn std::any::Any + Send)) -> String {
        self.panics.fetch_add(1, Ordering::Relaxed);
        format!("panicked: {}", panic_message(panic))
    }

    /// What follows a handler's run: the failure logged and counted, the
    /// acknowledgement notified.
    fn finish_run(&self, entry: &Entry, event: &Event, outcome: Result<(), String>) {
        if let Err(error) = &outcome {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if error.starts_with("panicked: ") {
                tracing::error!(event = %event.name, handler = %entry.label, %error,
                    "event handler panicked");
            } else {
                tracing::error!(event = %event.name, handler = %entry.label, %error,
                    "event handler failed");
            }
        }
        if let Some(ack) = &entry.ack {
            let name: Arc<str> = match ack {
                Ack::Completed => format!("completed:{}", event.name).into(),
                Ack::Named(name) => name.clone(),
            };
            let completion = Completion {
                event: event.name.to_string(),
                error: outcome.err(),
            };
            self.notify(Event::new(name, completion).with_local_only(event.local_only));
        }
    }

    /// Starts an async handler's run under the cap: its future goes to
    /// the bus's runtime. Without room within the wait, or without a
    /// runtime, the run is dropped: counted, logged, and acknowledged
    /// with the error.
    #[cfg(feature = "tokio")]
    fn start_async(
        &self,
        entry: &Arc<Entry>,
        start: &async_handlers::AsyncHandlerFn,
        event: &Event,
        hold: Option<Arc<SharedGuard>>,
    ) {
        let runtime = match self.asyncs.handle() {
            Ok(runtime) => runtime,
            Err(error) => return self.finish_run(entry, event, Err(error)),
        };
        let future = match catch_unwind(AssertUnwindSafe(|| start(event))) {
            Ok(Ok(future)) => future,
            Ok(Err(error)) => return self.finish_run(entry, event, Err(error)),
            Err(panic) => {
                let error = self.panicked(&*panic);
                return self.finish_run(entry, event, Err(error));
            }
        };
        if !self.asyncs.acquire() {
            let dropped = self.asyncs.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let error = format!(
                "dropped: {} async handler runs in flight, none finished within the wait ({dropped} dropped so far)",
                self.asyncs.in_flight()
            );
            return self.finish_run(entry, event, Err(error));
        }
        let Some(core) = self.me.upgrade() else {
            self.asyncs.release();
            return;
        };
        let (entry, event) = (entry.clone(), event.clone());
        runtime.spawn(async move {
            let outcome = match async_handlers::CatchUnwind(future).await {
                Ok(outcome) => outcome,
                Err(panic) => Err(core.panicked(&*panic)),
            };
            core.asyncs.release();
            core.finish_run(&entry, &event, outcome);
            drop(hold);
        });
    }
}

/// A one-per-service group's key as a stable number (FNV-1a): the same
/// in every process and across restarts, for the names links give it.
pub(crate) fn group_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A wait between `base / 2` and `base`, picked at random ("equal
/// jitter"), so processes that lost the same server come back spread out.
pub(crate) fn jittered(base: Duration) -> Duration {
    let fraction = (crate::random_u64() >> 11) as f64 / (1_u64 << 53) as f64;
    base.mul_f64(0.5 + fraction / 2.0)
}

/// How long a thread spins for work before it sleeps.
pub(crate) const SPIN: Duration = Duration::from_micros(30);

/// Spins until `done` or `limit` passes; returns whether it got done.
pub(crate) fn spin_until(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let start = Instant::now();
    for i in 1_u32.. {
        if done() {
            return true;
        }
        std::hint::spin_loop();
        if i % 64 == 0 {
            if start.elapsed() >= limit {
                break;
            }
            // Let a runnable thread have the core (on a machine with few
            // cores, likely the one that will bring the work).
            std::thread::yield_now();
        }
    }
    done()
}

/// A transport's drop: counts it and logs the first one, then every power
/// of two (a flood of drops must not become a flood of lines).
pub(crate) fn count_drop(counter: &AtomicU64, what: &dyn fmt::Display, event: &str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(dropped = n, %event, "{what}: events dropped so far");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

struct Owner {
    core: Arc<Core>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.core.queue.lock().stopping = true;
        if let Some(thread) = self.core.dispatcher.get() {
            thread.unpark();
        }
    }
}

/// An event bus with its own dispatcher thread.
///
/// Cloning gives another handle to the same bus. When the last handle is
/// dropped the dispatcher runs what is queued, then exits.
#[derive(Clone)]
pub struct EventBus {
    owner: Arc<Owner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("registrations", &self.core().registry.lock().len())
            .field(
                "dispatched",
                &self.core().dispatched.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A new bus with no registrations, and its dispatcher thread.
    pub fn new() -> Self {
        let core = Arc::new_cyclic(|me| Core {
            queue: CachePadded::new(Mutex::new(QueueState {
                items: VecDeque::new(),
                idle: false,
                stopping: false,
            })),
            registry: Mutex::new(Registry::default()),
            transport: RwLock::new(None),
            interest_hook: RwLock::new(None),
            inbound_hooks: RwLock::new(Arc::new([])),
            dispatcher: OnceCell::new(),
            failures: AtomicU64::new(0),
            dispatched: CachePadded::new(AtomicU64::new(0)),
            notified: CachePadded::new(AtomicU64::new(0)),
            received: CachePadded::new(AtomicU64::new(0)),
            handler_runs: CachePadded::new(AtomicU64::new(0)),
            panics: AtomicU64::new(0),
            queued: CachePadded::new(AtomicU64::new(0)),
            taken: CachePadded::new(AtomicU64::new(0)),
            ipc_linked: std::sync::atomic::AtomicBool::new(false),
            application_handlers: std::sync::atomic::AtomicBool::new(true),
            remote_bytes: std::sync::atomic::AtomicUsize::new(0),
            shared_routed: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
            #[cfg(feature = "tokio")]
            asyncs: async_handlers::AsyncRunner::new(),
        });
        let thread_core = core.clone();
        let handle = thread::Builder::new()
            .name("serve-common-events".into())
            .spawn(move || thread_core.run())
            .expect("cannot spawn the event dispatcher thread");
        let _ = core.dispatcher.set(handle.thread().clone());
        Self {
            owner: Arc::new(Owner { core }),
        }
    }

    /// Claims the bus's one IPC link; false if it has one already.
    /// What the registrations can match, for a transport's subscriptions.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn interest(&self) -> registry::Interest {
        self.core().registry.lock().interest()
    }

    /// Sets the hook called when registrations change.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn set_interest_hook(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self.core().interest_hook.write() = hook;
    }

    /// Claims the bus's one link to other processes (IPC or NATS).
    pub(crate) fn claim_ipc_link(&self) -> bool {
        !self.core().ipc_linked.swap(true, Ordering::AcqRel)
    }

    /// A link hands out the one-per-service events from now on (or, with
    /// `false`, no longer: they run in every process again).
    pub(crate) fn route_shared(&self, routed: bool) {
        self.core().shared_routed.store(routed, Ordering::Relaxed);
    }

    /// The one-per-service groups whose handlers run here.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn shared_interest(&self) -> Vec<registry::SharedInterest> {
        let application = self.core().application_handlers.load(Ordering::Relaxed);
        self.core().registry.lock().shared(application)
    }

    /// Every one-per-service group key registered here, and whether its
    /// handlers run here (not in a supervisor, unless they ask).
    pub(crate) fn shared_keys(&self) -> Vec<(Arc<str>, bool)> {
        let application = self.core().application_handlers.load(Ordering::Relaxed);
        self.core().registry.lock().shared_keys(application)
    }

    /// The one-per-service group keys whose handlers match `name`.
    pub(crate) fn shared_keys_for(&self, name: &str) -> Vec<Arc<str>> {
        self.core().registry.lock().shared_keys_for(name)
    }

    /// Hands `event` (from another process, or this one's own through the
    /// link) to the handlers of the one-per-service group `key`; `done`
    /// runs on the dispatcher thread once they returned.
    pub(crate) fn deliver_shared(&self, event: Event, key: Arc<str>, done: SharedDone) {
        count_event(&self.core().received, &event.name);
        self.core()
            .remote_bytes
            .fetch_add(event.remote_size(), Ordering::Relaxed);
        self.core().enqueue(Item::Shared(event, key, done));
    }

    /// Releases the claim after a link failed to start.
    pub(crate) fn release_ipc_link(&self) {
        self.core().ipc_linked.store(false, Ordering::Release);
    }

    fn core(&self) -> &Arc<Core> {
        &self.owner.core
    }

    /// Caps the async handler runs in flight on this bus at
    /// `max_in_flight` (default [`DEFAULT_MAX_IN_FLIGHT`]); at the cap, the
    /// dispatcher waits up to `wait` (default [`DEFAULT_WAIT`]) for a run
    /// to finish, then drops the new run: counted
    /// ([`async_handlers_dropped`](Self::async_handlers_dropped)), logged,
    /// and acknowledged with the error. Config: `events.async_max_in_flight`,
    /// `events.async_wait_ms` (the global bus).
    ///
    /// Needs the `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn limit_async_handlers(&self, max_in_flight: usize, wait: Duration) {
        self.core().asyncs.set_limits(max_in_flight, wait);
    }

    /// Async handler runs started and not finished.
    ///
    /// Needs the `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn async_handlers_in_flight(&self) -> usize {
        self.core().asyncs.in_flight()
    }

    /// Async handler runs dropped because the cap stayed full.
    ///
    /// Needs the `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn async_handlers_dropped(&self) -> u64 {
        self.core().asyncs.dropped.load(Ordering::Relaxed)
    }

    /// Starts a registration for `pattern` (see [`EventPattern::parse`] for
    /// what a plain string means); finish it with [`HandlerBuilder::call`],
    /// [`call_typed`](HandlerBuilder::call_typed) or
    /// [`call_data`](HandlerBuilder::call_data).
    pub fn on(&self, pattern: impl Into<EventPattern>) -> HandlerBuilder<'_> {
        HandlerBuilder {
            bus: self,
            pattern: pattern.into(),
            once: false,
            ack: None,
            label: None,
            in_supervisor: false,
            one_per_service: false,
        }
    }

    /// Registers `handler` for every event matching `pattern`, in this
    /// process (a supervisor of worker processes skips it: see [which
    /// processes run handlers](crate::event#which-processes-run-handlers)).
    pub fn register<F, R>(
        &self,
        pattern: impl Into<EventPattern>,
        handler: F,
    ) -> Result<Registration, PatternError>
    where
        F: Fn(&Event) -> R + Send + Sync + 'static,
        R: HandlerOutcome,
    {
        self.on(pattern).call(handler)
    }

    /// Notifies an event: matching handlers here run with `payload`, and a
    /// transport, if any, carries it to the service's other processes.
    pub fn notify<T: Serialize + Send + Sync + 'static>(
        &self,
        name: impl Into<Arc<str>>,
        payload: T,
    ) {
        self.core().notify(Event::new(name, payload));
    }

    /// Like [`notify`](Self::notify), but first checks that the event's
    /// transport (IPC, NATS) can carry it, so a payload too large for the
    /// NATS server is an error here rather than a log line later. Costs
    /// one encoding of the payload when a transport is set.
    pub fn try_notify<T: Serialize + Send + Sync + 'static>(
        &self,
        name: impl Into<Arc<str>>,
        payload: T,
    ) -> Result<(), NotifyError> {
        let event = Event::new(name, payload);
        let transport = self.core().transport.read().clone();
        if let Some(transport) = transport {
            let encoded = event.encode_payload()?;
            transport
                .check(event.name(), encoded.len())
                .map_err(NotifyError::Transport)?;
        }
        self.core().notify(event);
        Ok(())
    }

    /// Notifies an event that stays in this process.
    pub fn notify_local<T: Serialize + Send + Sync + 'static>(
        &self,
        name: impl Into<Arc<str>>,
        payload: T,
    ) {
        let core = self.core();
        let event = Event::new(name, payload).with_local_only(true);
        count_event(&core.notified, &event.name);
        core.enqueue(Item::Event(event));
    }

    /// The entry point for events from a second source (a transport
    /// receiving from other processes): `event` is dispatched to the local
    /// handlers like any other, after the inbound hooks, and is not handed
    /// to the transport again. Build it with [`Event::from_remote`].
    pub fn deliver(&self, event: Event) {
        if event.origin == Origin::Remote {
            count_event(&self.core().received, &event.name);
            self.core()
                .remote_bytes
                .fetch_add(event.remote_size(), Ordering::Relaxed);
        }
        self.core().enqueue(Item::Event(event));
    }

    /// Bytes of events from other processes ([`deliver`](Self::deliver))
    /// waiting to be dispatched: what a transport bounds its backlog by.
    pub fn remote_backlog_bytes(&self) -> usize {
        self.core().remote_bytes.load(Ordering::Relaxed)
    }

    /// Makes this bus a supervisor's: from now on it runs only the
    /// handlers marked [`in_supervisor`](HandlerBuilder::in_supervisor)
    /// (serve-common's own, and those that ask). See [which processes run
    /// handlers](crate::event#which-processes-run-handlers).
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) fn become_supervisor(&self) {
        self.core()
            .application_handlers
            .store(false, Ordering::Relaxed);
        // A link leaves the one-per-service groups it no longer runs.
        self.core().interest_changed();
    }

    /// Sets (or, with `None`, removes) the transport that carries this
    /// process's events to others.
    pub fn set_transport(&self, transport: Option<Arc<dyn EventTransport>>) {
        *self.core().transport.write() = transport;
    }

    /// Runs `hook` on the dispatcher thread for every event from
    /// [`deliver`](Self::deliver) with a remote origin, before its handlers.
    /// The config uses this to apply other processes' `set`s first.
    #[doc(hidden)]
    pub fn add_inbound_hook(&self, hook: impl Fn(&Event) + Send + Sync + 'static) {
        let mut hooks = self.core().inbound_hooks.write();
        let mut more = hooks.to_vec();
        more.push(Arc::new(hook));
        *hooks = more.into();
    }

    /// Returns a waiter for the next event matching `pattern`, registered
    /// now. Create it before triggering the event.
    pub fn wait_for(&self, pattern: impl Into<EventPattern>) -> Result<EventWaiter, PatternError> {
        let pattern = pattern.into();
        let slot = Arc::new(WaitSlot::default());
        let fill = slot.clone();
        let label = format!("wait_for({pattern})");
        let shown = pattern.to_string();
        let id = self.core().register(pattern, |id| Entry {
            id,
            handler: registry::Handler::Sync(Arc::new(move |event: &Event| {
                fill.fill(event);
                Ok(())
            })),
            once: true,
            ack: None,
            label: label.into(),
            // A wait is this process's own code asking: it always runs.
            in_supervisor: true,
            shared: None,
        })?;
        Ok(EventWaiter {
            slot,
            id,
            core: Arc::downgrade(self.core()),
            pattern: shown,
        })
    }

    /// Notifies `name` and blocks until the acknowledgement `ack` (default
    /// `completed:<name>`, what `.ack()` registrations notify) arrives, at
    /// most `timeout`. The wait is registered before the notification, so
    /// a fast handler cannot beat it. Returns the first acknowledgement,
    /// whose payload is a [`Completion`].
    pub fn notify_and_wait<T: Serialize + Send + Sync + 'static>(
        &self,
        name: &str,
        payload: T,
        ack: Option<&str>,
        timeout: Duration,
    ) -> Result<Event, WaitError> {
        let ack_name = match ack {
            Some(ack) => ack.to_owned(),
            None => format!("completed:{name}"),
        };
        if self.core().is_dispatcher_thread() {
            return Err(WaitError::OnDispatcherThread { pattern: ack_name });
        }
        let waiter = self.wait_for(EventPattern::Exact(ack_name))?;
        self.notify(name, payload);
        waiter.wait(timeout)
    }

    /// Blocks until everything notified before this call has been
    /// dispatched (acknowledgements it caused may still be queued), at most
    /// `timeout`. Returns whether it got there; from a handler of this bus
    /// it returns `false` at once.
    pub fn flush(&self, timeout: Duration) -> bool {
        if self.core().is_dispatcher_thread() {
            return false;
        }
        let slot = Arc::new(WaitSlot::default());
        self.core().enqueue(Item::Barrier(slot.clone()));
        slot.wait_until(Instant::now() + timeout).is_some()
    }

    /// Resolves once the dispatcher has gone past everything queued now
    /// (registers nothing, so links' subscriptions stay as they are).
    #[cfg_attr(not(feature = "actix"), allow(dead_code))]
    pub(crate) async fn barrier(&self) {
        let slot = Arc::new(WaitSlot::default());
        self.core().enqueue(Item::Barrier(slot.clone()));
        std::future::poll_fn(|cx| slot.poll(cx)).await;
    }

    /// How many queued items (events, acknowledgements) the dispatcher has
    /// not taken yet.
    pub fn backlog(&self) -> u64 {
        let core = self.core();
        core.queued
            .load(Ordering::Acquire)
            .saturating_sub(core.taken.load(Ordering::Relaxed))
    }

    /// How many handler calls failed (error or panic) on this bus.
    pub fn failures(&self) -> u64 {
        self.core().failures.load(Ordering::Relaxed)
    }

    /// How many events this bus dispatched.
    pub fn dispatched(&self) -> u64 {
        self.core().dispatched.load(Ordering::Relaxed)
    }

    /// The bus's counters, for the metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn stats(&self) -> BusStats {
        let core = self.core();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BusStats {
            notified: load(&core.notified),
            received: load(&core.received),
            handler_runs: load(&core.handler_runs),
            failures: load(&core.failures),
            panics: load(&core.panics),
        }
    }

    /// Registers the [`#[on_event]`](macro@crate::on_event) handlers linked
    /// into this binary on this bus. The global bus does it when created.
    pub fn register_on_event_handlers(&self) -> Vec<Registration> {
        let mut defs: Vec<&crate::__private::OnEventHandler> =
            inventory::iter::<crate::__private::OnEventHandler>
                .into_iter()
                .collect();
        defs.sort_by_key(|def| (def.module, def.line));
        defs.into_iter()
            .filter_map(|def| {
                let mut builder = self.on(def.pattern).label(def.name);
                if def.once {
                    builder = builder.once();
                }
                if def.supervisor {
                    builder = builder.in_supervisor();
                }
                if def.one_per_service {
                    builder = builder.one_per_service();
                }
                builder = match def.ack {
                    crate::__private::AckDef::None => builder,
                    crate::__private::AckDef::Completed => builder.ack(),
                    crate::__private::AckDef::Named(name) => builder.ack_as(name),
                };
                let registered = match def.call {
                    crate::__private::HandlerCall::Sync(call) => builder.call(call),
                    #[cfg(feature = "tokio")]
                    crate::__private::HandlerCall::Async(start) => {
                        builder.__call_async_adapter(start)
                    }
                };
                match registered {
                    Ok(registration) => Some(registration),
                    Err(error) => {
                        tracing::error!(handler = def.name, %error, "cannot register #[on_event] handler");
                        None
                    }
                }
            })
            .collect()
    }
}

/// Options of a registration in progress, from [`EventBus::on`].
#[must_use = "a registration happens when you call `call`, `call_typed` or `call_data`"]
pub struct HandlerBuilder<'a> {
    bus: &'a EventBus,
    pattern: EventPattern,
    once: bool,
    ack: Option<Ack>,
    label: Option<Cow<'static, str>>,
    in_supervisor: bool,
    one_per_service: bool,
}

impl HandlerBuilder<'_> {
    /// Runs the handler in one process of the service for each event,
    /// not in every process: the way a work queue hands each job to one
    /// worker. The registrations of the same pattern and
    /// [`label`](Self::label) (by default the handler's type name) in the
    /// service's processes form one group; each event goes to one of them.
    /// See [one per service](crate::event#one-per-service) for how each
    /// link chooses, and what happens when a process dies mid-handler.
    /// Without a link to other processes it runs here.
    pub fn one_per_service(mut self) -> Self {
        self.one_per_service = true;
        self
    }

    /// Runs the handler in the supervisor process too, when the service
    /// runs worker processes (`server.processes > 1`). By default a
    /// supervisor runs no application handler: see [which processes run
    /// handlers](crate::event#which-processes-run-handlers).
    pub fn in_supervisor(mut self) -> Self {
        self.in_supervisor = true;
        self
    }

    /// Runs the handler for the first matching event only (the original's
    /// single use), then unregisters it.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// After the handler returns, notifies `completed:<event>` with a
    /// [`Completion`].
    pub fn ack(mut self) -> Self {
        self.ack = Some(Ack::Completed);
        self
    }

    /// After the handler returns, notifies `name` with a [`Completion`].
    pub fn ack_as(mut self, name: impl Into<Arc<str>>) -> Self {
        self.ack = Some(Ack::Named(name.into()));
        self
    }

    /// Names the handler in log lines (default: its type name).
    pub fn label(mut self, label: impl Into<Cow<'static, str>>) -> Self {
        self.label = Some(label.into());
        self
    }

    fn finish(
        self,
        label: &'static str,
        handler: registry::Handler,
    ) -> Result<Registration, PatternError> {
        let core = self.bus.core();
        let (once, ack, in_supervisor) = (self.once, self.ack, self.in_supervisor);
        let label = self.label.unwrap_or(Cow::Borrowed(label));
        // The group: the same registration in every process of the
        // service (same pattern, same handler) is the same group.
        let shared = self
            .one_per_service
            .then(|| Arc::<str>::from(format!("{} {label}", self.pattern)));
        let id = core.register(self.pattern, |id| Entry {
            id,
            handler,
            once,
            ack,
            label,
            in_supervisor,
            shared,
        })?;
        Ok(Registration {
            id,
            core: Arc::downgrade(core),
        })
    }

    /// Registers a handler that takes the whole [`Event`].
    pub fn call<F, R>(self, handler: F) -> Result<Registration, PatternError>
    where
        F: Fn(&Event) -> R + Send + Sync + 'static,
        R: HandlerOutcome,
    {
        self.finish(
            std::any::type_name::<F>(),
            registry::Handler::Sync(Arc::new(move |event: &Event| handler(event).into_outcome())),
        )
    }

    /// Registers a handler that takes the event name and the payload as `T`.
    pub fn call_typed<T, F, R>(self, handler: F) -> Result<Registration, PatternError>
    where
        T: DeserializeOwned + 'static,
        F: Fn(&str, &T) -> R + Send + Sync + 'static,
        R: HandlerOutcome,
    {
        self.finish(
            std::any::type_name::<F>(),
            registry::Handler::Sync(Arc::new(move |event: &Event| {
                let payload = event.payload::<T>().map_err(|e| e.to_string())?;
                handler(event.name(), &payload).into_outcome()
            })),
        )
    }

    /// Registers a handler that takes the payload only (the original's
    /// "do not pass the event name").
    pub fn call_data<T, F, R>(self, handler: F) -> Result<Registration, PatternError>
    where
        T: DeserializeOwned + 'static,
        F: Fn(&T) -> R + Send + Sync + 'static,
        R: HandlerOutcome,
    {
        self.finish(
            std::any::type_name::<F>(),
            registry::Handler::Sync(Arc::new(move |event: &Event| {
                let payload = event.payload::<T>().map_err(|e| e.to_string())?;
                handler(&payload).into_outcome()
            })),
        )
    }

    /// Registers an async handler: for each event, `handler` makes a
    /// future (it gets its own clone of the event, so the future is
    /// `'static`), which runs on the bus's tokio runtime; the dispatcher
    /// does not wait for it. See [async handlers](crate::event#async-handlers).
    ///
    /// Needs the `tokio` feature.
    #[cfg(feature = "tokio")]
    pub fn call_async<F, Fut, R>(self, handler: F) -> Result<Registration, PatternError>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
        R: HandlerOutcome,
    {
        self.finish(
            std::any::type_name::<F>(),
            registry::Handler::Async(Arc::new(move |event: &Event| {
                let future = handler(event.clone());
                let started: async_handlers::BoxFuture =
                    Box::pin(async move { future.await.into_outcome() });
                Ok(started)
            })),
        )
    }

    /// Registers an `#[on_event]` async handler's adapter.
    #[cfg(feature = "tokio")]
    #[doc(hidden)]
    pub fn __call_async_adapter(
        self,
        adapter: fn(&Event) -> Result<async_handlers::BoxFuture, String>,
    ) -> Result<Registration, PatternError> {
        self.finish(
            std::any::type_name_of_val(&adapter),
            registry::Handler::Async(Arc::new(adapter)),
        )
    }
}

/// A registered handler. Dropping it keeps the registration;
/// [`unregister`](Self::unregister) removes it.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    core: Weak<Core>,
}

impl Registration {
    /// Removes the handler. Returns whether it was still registered (a
    /// single-use handler that ran is gone already).
    pub fn unregister(self) -> bool {
        self.core.upgrade().is_some_and(|core| {
            let removed = core.registry.lock().remove(self.id);
            if removed {
                core.interest_changed();
            }
            removed
        })
    }

    /// Whether the handler is still registered.
    pub fn is_active(&self) -> bool {
        self.core
            .upgrade()
            .is_some_and(|core| core.registry.lock().contains(self.id))
    }
}

static GLOBAL: Lazy<EventBus> = Lazy::new(|| {
    let bus = EventBus::new();
    bus.register_on_event_handlers();
    bus
});

/// The process's default bus, created on first use with every
/// [`#[on_event]`](macro@crate::on_event) handler registered.
pub fn bus() -> &'static EventBus {
    &GLOBAL
}

/// Creates the global bus now (idempotent): registers the `#[on_event]`
/// handlers and starts the dispatcher.
pub fn initialize() -> &'static EventBus {
    bus()
}

/// [`EventBus::register`] on the global bus.
pub fn register<F, R>(
    pattern: impl Into<EventPattern>,
    handler: F,
) -> Result<Registration, PatternError>
where
    F: Fn(&Event) -> R + Send + Sync + 'static,
    R: HandlerOutcome,
{
    bus().register(pattern, handler)
}

/// [`EventBus::on`] on the global bus.
pub fn on(pattern: impl Into<EventPattern>) -> HandlerBuilder<'static> {
    bus().on(pattern)
}

/// [`EventBus::notify`] on the global bus.
pub fn notify<T: Serialize + Send + Sync + 'static>(name: impl Into<Arc<str>>, payload: T) {
    bus().notify(name, payload);
}

/// [`EventBus::try_notify`] on the global bus.
pub fn try_notify<T: Serialize + Send + Sync + 'static>(
    name: impl Into<Arc<str>>,
    payload: T,
) -> Result<(), NotifyError> {
    bus().try_notify(name, payload)
}

/// [`EventBus::notify_local`] on the global bus.
pub fn notify_local<T: Serialize + Send + Sync + 'static>(name: impl Into<Arc<str>>, payload: T) {
    bus().notify_local(name, payload);
}

/// [`EventBus::wait_for`] on the global bus.
pub fn wait_for(pattern: impl Into<EventPattern>) -> Result<EventWaiter, PatternError> {
    bus().wait_for(pattern)
}

/// [`EventBus::notify_and_wait`] on the global bus.
pub fn notify_and_wait<T: Serialize + Send + Sync + 'static>(
    name: &str,
    payload: T,
    ack: Option<&str>,
    timeout: Duration,
) -> Result<Event, WaitError> {
    bus().notify_and_wait(name, payload, ack, timeout)
}
