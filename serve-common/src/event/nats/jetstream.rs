//! JetStream ([`Delivery::JetStream`](super::Delivery::JetStream)): the
//! service's stream, publishing with acknowledgements, and this process's
//! consumer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, AckKind, ErrorCode};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::time::Instant;

use super::options::jittered;
use super::{count_drop, wire, Link, News, Outgoing, Receiver, SEND_TIMEOUT};
use crate::event::{EventBus, SharedOutcome};

/// How long the server waits for a publish's acknowledgement to come back.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at an event the stream refuses with an error (not a lost
/// acknowledgement) before it is dropped and counted.
const MAX_REFUSALS: u32 = 10;
/// How often an unusable stream is looked at again.
const STREAM_RECHECK: Duration = Duration::from_secs(2);
/// The consumer's idle heartbeat: two missed, and it is made again.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long the server keeps a consumer nobody reads.
const INACTIVE: Duration = Duration::from_secs(60);
/// How long the server keeps a one-per-service group's consumer that no
/// process reads.
const GROUP_INACTIVE: Duration = Duration::from_secs(24 * 3600);

/// An event being sent.
struct Item {
    seq: u64,
    subject: async_nats::Subject,
    bytes: bytes::Bytes,
    /// Times the stream refused it (not counting lost acknowledgements).
    refusals: u32,
}

/// An event handed to the server, waiting for the stream's
/// acknowledgement.
struct Sent {
    item: Item,
    at: Instant,
}

/// What the stream answers a publish with (JetStream's JSON).
#[derive(serde::Deserialize)]
struct AckReply {
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(serde::Deserialize)]
struct AckError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// How a publish ended, as its acknowledgement (or its absence) says.
enum Acked {
    Stored {
        duplicate: bool,
    },
    /// The stream answered with an error (a cluster electing a leader
    /// answers so).
    Refused(String),
    /// No stream took it: no acknowledgement in time, no responders.
    Lost(&'static str),
}

struct Js {
    link: Link,
    context: js::Context,
    stream_name: String,
    /// The stream, once checked (`None` again when it went missing).
    stream_ok: bool,
    /// Not sent yet, oldest first.
    pending: VecDeque<Item>,
    /// To send again (before `pending`: they are older), by sequence
    /// number.
    resend: BTreeMap<u64, Item>,
    /// Sent, waiting for the stream's acknowledgement, by sequence
    /// number; the acknowledgements come to one subscription (no future,
    /// timer and channel per event).
    inflight: foldhash::HashMap<u64, Sent>,
    /// The sequence numbers sent, in the order sent (some acknowledged
    /// since): what looks for a missing acknowledgement.
    sent_order: VecDeque<u64>,
    /// Where the stream's acknowledgements come: `<ack_prefix><seq>`.
    ack_prefix: String,
    /// When to try again after a failure (a lost acknowledgement, a
    /// stream that cannot be used).
    retry_at: Option<Instant>,
    failures: u32,
    /// The stream sequence this process's consumer reads next (0 before
    /// the stream was first checked).
    next_read: Arc<AtomicU64>,
    consumer: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>,
    /// One-per-service groups: a reader of each group's shared consumer.
    groups: HashMap<Arc<str>, (tokio::task::JoinHandle<()>, watch::Sender<bool>)>,
}

pub(super) async fn run(mut link: Link) {
    let context = js::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(link.client.clone());
    // This process's acknowledgements, under the service's own subjects.
    let ack_prefix = format!(
        "_SERVE_COMMON.{}.ack.{:016x}.",
        link.options.subject_prefix, link.origin
    );
    // Kept across reconnections (the client subscribes again); retried
    // while the first connection is not there yet.
    let mut acks = loop {
        match link.client.subscribe(format!("{ack_prefix}*")).await {
            Ok(acks) => break acks,
            Err(error) => {
                tracing::debug!(%error, "cannot subscribe to JetStream acknowledgements yet");
                tokio::select! {
                    _ = link.stopped.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    };
    let mut js = Js {
        stream_name: link.options.stream_name(),
        link,
        context,
        stream_ok: false,
        pending: VecDeque::new(),
        resend: BTreeMap::new(),
        inflight: foldhash::HashMap::default(),
        sent_order: VecDeque::new(),
        ack_prefix,
        retry_at: None,
        failures: 0,
        next_read: Arc::new(AtomicU64::new(0)),
        consumer: None,
        groups: HashMap::new(),
    };
    loop {
        // No lingering here (see `Link::linger`): the acknowledgements
        // keep this loop busy, and a spin would take the core the server
        // needs to store the events (measured: twice the latency).
        let room = js.unconfirmed() < js.link.options.buffer;
        let retry_at = js.retry_at;
        let ack_due = js.ack_due();
        let link = &mut js.link;
        tokio::select! {
            biased;
            _ = link.stopped.changed() => break,
            Some(event) = link.events.recv() => match link.on_client_event(event).await {
                News::Connected => {
                    // What was in flight may have lost its
                    // acknowledgement with the connection: sent again
                    // now (the server drops a copy by its id).
                    js.resend_inflight(|_| true);
                    // Fresh readers after a reconnection: a pull stream
                    // that lived through it can under-ask for a while.
                    js.stop_readers().await;
                    js.check_stream().await;
                }
                News::Disconnected | News::Other => {}
            },
            Ok(()) = link.interest.changed() => {
                if js.stream_ok {
                    js.sync_groups();
                }
            }
            Some(message) = acks.next() => {
                js.on_ack(&message);
                // What else came back, without a turn of the loop each.
                while let Some(Some(message)) = acks.next().now_or_never() {
                    js.on_ack(&message);
                }
                js.update_buffered();
            }
            _ = tokio::time::sleep_until(ack_due.unwrap_or_else(Instant::now)), if ack_due.is_some() => {
                js.on_ack_timeout();
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                js.retry_at = None;
                if !js.stream_ok {
                    js.check_stream().await;
                }
            }
            Some(first) = link.outgoing.recv(), if room => {
                js.enqueue(first);
                while js.unconfirmed() < js.link.options.buffer {
                    match js.link.outgoing.try_recv() {
                        Some(next) => js.enqueue(next),
                        None => break,
                    }
                }
            }
        }
        js.fill().await;
    }
    js.close(&mut acks).await;
    let _ = acks.unsubscribe().await;
}

impl Js {
    fn enqueue(&mut self, outgoing: Outgoing) {
        let (seq, subject, bytes) = self.link.wrap(outgoing);
        self.pending.push_back(Item {
            seq,
            subject,
            bytes,
            refusals: 0,
        });
        self.update_buffered();
    }

    /// Events notified here the stream has not acknowledged yet.
    fn unconfirmed(&self) -> usize {
        self.pending.len() + self.resend.len() + self.inflight.len()
    }

    fn update_buffered(&self) {
        self.link.shared.update_buffered(self.unconfirmed());
    }

    /// When the oldest acknowledgement waited for is overdue.
    fn ack_due(&mut self) -> Option<Instant> {
        while let Some(seq) = self.sent_order.front() {
            match self.inflight.get(seq) {
                Some(sent) => return Some(sent.at + ACK_TIMEOUT),
                None => {
                    self.sent_order.pop_front();
                }
            }
        }
        None
    }

    /// Moves what is in flight (those `which` picks) back to be sent
    /// again.
    fn resend_inflight(&mut self, which: impl Fn(&Sent) -> bool) -> usize {
        let mut moved = 0;
        for (seq, sent) in self.inflight.extract_if(|_, sent| which(sent)) {
            self.resend.insert(seq, sent.item);
            moved += 1;
        }
        if moved > 0 {
            self.link
                .shared
                .stats
                .resent
                .fetch_add(moved as u64, Ordering::Relaxed);
        }
        moved
    }

    /// Tries again later, waiting longer after each failure in a row.
    fn back_off(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(50)
            .saturating_mul(1 << self.failures.min(5))
            .min(Duration::from_secs(1));
        self.retry_at = Some(Instant::now() + jittered(base));
    }

    /// Publishes what waits, oldest first, up to the window.
    async fn fill(&mut self) {
        if !self.stream_ok || self.retry_at.is_some() || !self.link.is_connected() {
            return;
        }
        let window = self.link.options.ack_window;
        let client = self.link.client.clone();
        let origin = self.link.origin;
        let Self {
            pending,
            resend,
            inflight,
            sent_order,
            ack_prefix,
            link,
            ..
        } = self;
        let oversize = &link.shared.stats.oversize;
        // One deadline for the batch (a timer per event costs more than
        // the publish); an item cut short stays to be sent.
        let published = tokio::time::timeout(SEND_TIMEOUT, async {
            let mut reply = String::with_capacity(ack_prefix.len() + 20);
            while inflight.len() < window {
                // Taken out once handed over: an item whose hand-over the
                // deadline cuts short stays, to be sent again (the server
                // drops a copy by its id).
                let item = match resend.first_key_value() {
                    Some((_, item)) => item,
                    None => match pending.front() {
                        Some(item) => item,
                        None => break,
                    },
                };
                let seq = item.seq;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    wire::message_id(origin, seq).as_str(),
                );
                reply.clear();
                reply.push_str(ack_prefix);
                let _ = std::fmt::Write::write_fmt(&mut reply, format_args!("{seq}"));
                let sent = client
                    .publish_with_reply_and_headers(
                        item.subject.clone(),
                        async_nats::Subject::from(reply.as_str()),
                        headers,
                        item.bytes.clone(),
                    )
                    .await;
                let taken = match resend.first_key_value() {
                    Some((&first, _)) if first == seq => resend.pop_first().map(|(_, item)| item),
                    _ => pending.pop_front(),
                };
                match sent {
                    Ok(()) => {
                        if let Some(item) = taken {
                            inflight.insert(
                                seq,
                                Sent {
                                    item,
                                    at: Instant::now(),
                                },
                            );
                            sent_order.push_back(seq);
                        }
                    }
                    Err(error)
                        if error.kind()
                            == async_nats::client::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        oversize.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(seq, %error, "event not sent over NATS");
                    }
                    Err(error) => {
                        // Not handed over: kept, in its place.
                        if let Some(item) = taken {
                            resend.insert(seq, item);
                        }
                        tracing::debug!(%error, "JetStream publish failed; kept for a resend");
                        return false;
                    }
                }
            }
            true
        })
        .await;
        if published != Ok(true) {
            self.back_off();
        }
        self.update_buffered();
    }

    /// An acknowledgement came back: the event is stored (or refused).
    fn on_ack(&mut self, message: &async_nats::Message) {
        // The reply subject says which event; anything else is not ours.
        let Some(seq) = message
            .subject
            .as_str()
            .strip_prefix(self.ack_prefix.as_str())
            .and_then(|seq| seq.parse::<u64>().ok())
        else {
            return;
        };
        let Some(sent) = self.inflight.remove(&seq) else {
            // Late (already sent again and acknowledged): nothing to do.
            return;
        };
        let acked = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Acked::Lost("no stream took it (no responders)")
        } else {
            match serde_json::from_slice::<AckReply>(&message.payload) {
                Ok(AckReply {
                    error: None,
                    duplicate,
                }) => Acked::Stored { duplicate },
                Ok(AckReply {
                    error: Some(error), ..
                }) => Acked::Refused(format!(
                    "{} (code {}, error code {})",
                    error.description, error.code, error.err_code
                )),
                Err(error) => Acked::Refused(format!(
                    "an acknowledgement that is not JetStream's: {error}"
                )),
            }
        };
        self.acked(sent.item, acked);
    }

    /// Acknowledgements overdue: those events go again (the server drops
    /// a copy by its id).
    fn on_ack_timeout(&mut self) {
        let now = Instant::now();
        let moved = self.resend_inflight(|sent| sent.at + ACK_TIMEOUT <= now);
        if moved > 0 {
            tracing::debug!(
                events = moved,
                "no JetStream acknowledgement in time; sent again"
            );
            self.back_off();
        }
        self.update_buffered();
    }

    fn acked(&mut self, mut item: Item, acked: Acked) {
        let stats = &self.link.shared.stats;
        match acked {
            Acked::Stored { duplicate } => {
                self.failures = 0;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Acked::Refused(error) => {
                // The stream answered, with an error: a few more tries,
                // then dropped.
                item.refusals += 1;
                if item.refusals >= MAX_REFUSALS {
                    tracing::error!(seq = item.seq, %error, "the JetStream stream keeps refusing an event; dropped");
                    count_drop(&stats.dropped, "stream refused", item.subject.as_str());
                } else {
                    tracing::debug!(seq = item.seq, %error, "the JetStream stream refused an event; sent again");
                    stats.resent.fetch_add(1, Ordering::Relaxed);
                    self.resend.insert(item.seq, item);
                    self.back_off();
                }
            }
            Acked::Lost(why) => {
                tracing::debug!(
                    seq = item.seq,
                    why,
                    "no JetStream acknowledgement; sent again"
                );
                stats.resent.fetch_add(1, Ordering::Relaxed);
                self.resend.insert(item.seq, item);
                self.back_off();
            }
        }
    }

    /// The stream as the options describe it.
    fn wanted_stream(&self) -> stream::Config {
        let options = &self.link.options;
        stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![format!("{}.>", options.subject_prefix)],
            max_age: options.stream.max_age,
            max_bytes: options.stream.max_bytes,
            num_replicas: options.stream.replicas,
            duplicate_window: options.stream.duplicate_window,
            storage: if options.stream.memory {
                StorageType::Memory
            } else {
                StorageType::File
            },
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            description: Some("serve-common events".to_owned()),
            ..Default::default()
        }
    }

    /// Finds (or makes) the stream and checks it is the configured one;
    /// then starts the consumer and says the link is ready. On a failure:
    /// logged, on the health check, tried again shortly.
    async fn check_stream(&mut self) {
        match self.find_stream().await {
            Ok(last_sequence) => {
                *self.link.shared.stream_error.lock() = None;
                self.stream_ok = true;
                // A process reads what is written after it first
                // connected; after that, from where it left off.
                let _ = self.next_read.compare_exchange(
                    0,
                    last_sequence + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                self.start_consumer();
                self.sync_groups();
                self.link.announce_ready();
            }
            Err(error) => {
                self.stream_ok = false;
                *self.link.shared.stream_error.lock() = Some(error.clone());
                self.link.report_error(format!(
                    "the JetStream stream {:?} cannot be used: {error}",
                    self.stream_name
                ));
                self.retry_at = Some(Instant::now() + jittered(STREAM_RECHECK));
            }
        }
    }

    /// The stream's last sequence number, once it is there and right.
    async fn find_stream(&self) -> Result<u64, String> {
        let wanted = self.wanted_stream();
        let found = self.context.get_stream(&self.stream_name).await;
        let info = match found {
            Ok(stream) => stream.cached_info().clone(),
            Err(error) => match error.kind() {
                GetStreamErrorKind::JetStream(js_error)
                    if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    let created = self
                        .context
                        .create_stream(wanted.clone())
                        .await
                        .map_err(|e| format!("cannot create it: {e}"))?;
                    tracing::info!(stream = %self.stream_name, subjects = ?wanted.subjects, replicas = wanted.num_replicas, "JetStream stream created");
                    created.cached_info().clone()
                }
                GetStreamErrorKind::JetStream(js_error) => {
                    return Err(js_error.to_string());
                }
                _ => {
                    return Err(format!(
                        "no answer from JetStream ({error}); is the server started with JetStream (`-js`)? With a server without it, set events.nats.delivery = \"at-most-once\""
                    ));
                }
            },
        };
        let differences = stream_differences(&wanted, &info.config);
        if !differences.is_empty() {
            return Err(format!(
                "it exists with other settings ({}); change the config, or the stream by hand (`nats stream edit`), serve-common does not reconfigure it",
                differences.join("; ")
            ));
        }
        Ok(info.state.last_sequence)
    }

    fn start_consumer(&mut self) {
        if self
            .consumer
            .as_ref()
            .is_some_and(|(task, _)| !task.is_finished())
        {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let reader = Reader {
            context: self.context.clone(),
            stream_name: self.stream_name.clone(),
            prefix: self.link.options.subject_prefix.clone(),
            bus: self.link.bus.clone(),
            receiver: self.link.receiver.clone(),
            next_read: self.next_read.clone(),
            interest: self.link.interest.clone(),
            stopped,
        };
        self.consumer = Some((tokio::spawn(reader.run()), stop));
    }

    /// Stops this process's consumer and the group readers, and waits
    /// (a second at most) until they are gone: a new consumer starts after
    /// the last event the old one handed over.
    async fn stop_readers(&mut self) {
        let mut readers: Vec<_> = self.groups.drain().map(|(_, group)| group).collect();
        readers.extend(self.consumer.take());
        for (_, stop) in &readers {
            let _ = stop.send(true);
        }
        for (task, _) in readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }

    /// Sends what waits, for up to two seconds, and stops the consumer.
    async fn close(&mut self, acks: &mut async_nats::Subscriber) {
        while let Some(next) = self.link.outgoing.try_recv() {
            self.enqueue(next);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.unconfirmed() > 0 && self.stream_ok && Instant::now() < deadline {
            self.retry_at = None;
            self.fill().await;
            match tokio::time::timeout_at(deadline, acks.next()).await {
                Ok(Some(message)) => self.on_ack(&message),
                Ok(None) | Err(_) => break,
            }
        }
        let unsent = self.unconfirmed();
        if unsent > 0 {
            tracing::warn!(
                unsent,
                "NATS link closed with events the stream has not acknowledged"
            );
        }
        self.stop_readers().await;
    }

    /// A reader for each one-per-service group registered here (and none
    /// for a group no longer registered).
    fn sync_groups(&mut self) {
        let wanted = self.link.bus.shared_interest();
        let keys: BTreeSet<Arc<str>> = wanted.iter().map(|g| g.key.clone()).collect();
        self.groups.retain(|key, (task, stop)| {
            let keep = keys.contains(key) && !task.is_finished();
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        let prefix = &self.link.options.subject_prefix;
        for group in wanted {
            if self.groups.contains_key(&group.key) {
                continue;
            }
            let subjects = super::subjects(prefix, &group.interest);
            let filter = match (subjects.len(), subjects.first()) {
                (1, Some(only)) => only.clone(),
                _ => format!("{prefix}.>"),
            };
            let (stop, stopped) = watch::channel(false);
            let reader = GroupReader {
                context: self.context.clone(),
                stream_name: self.stream_name.clone(),
                receiver: self.link.receiver.clone(),
                key: group.key.clone(),
                filter,
                ack_wait: self.link.options.ack_wait,
                start: self.next_read.load(Ordering::Acquire),
                stopped,
            };
            self.groups
                .insert(group.key, (tokio::spawn(reader.run()), stop));
        }
    }
}

/// A one-per-service group's reader: the group's durable consumer, shared
/// by every process that registered the group; the server hands each
/// event to one of them and, without an acknowledgement within
/// `ack_wait` (the process died mid-handler), to another.
struct GroupReader {
    context: js::Context,
    stream_name: String,
    receiver: Arc<Receiver>,
    key: Arc<str>,
    filter: String,
    ack_wait: Duration,
    /// Where a group made now starts.
    start: u64,
    stopped: watch::Receiver<bool>,
}

impl GroupReader {
    async fn run(mut self) {
        let mut failures = 0_u32;
        loop {
            match self.make().await {
                Ok(messages) => {
                    if self.read(messages).await {
                        return;
                    }
                    failures = 0;
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(group = %self.key, %error, "cannot reach a one-per-service group's JetStream consumer; trying again");
                    }
                }
            }
            failures = failures.saturating_add(1);
            if !pause(&mut self.stopped, failures).await {
                return;
            }
        }
    }

    async fn make(&self) -> Result<pull::Stream, String> {
        let name = super::group_name(&self.key);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            // Where a new group starts: where this process started
            // reading (what was written before a group existed is its
            // too); an existing one goes on from where the service left it.
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: self.start.max(1),
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            filter_subject: self.filter.clone(),
            max_ack_pending: 1_024,
            // A group whose handler is gone from every process (renamed,
            // removed) is forgotten a day later.
            inactive_threshold: GROUP_INACTIVE,
            description: Some(format!("serve-common one_per_service {}", self.key)),
            ..Default::default()
        };
        let stream = self
            .context
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| e.to_string())?;
        let consumer: consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| e.to_string())?;
        consumer
            .stream()
            // Few at a time: what waits in this process's queue counts
            // against `ack_wait` (see the event module's docs).
            .max_messages_per_batch(16)
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads until the stream breaks (false) or the group is stopped (true).
    async fn read(&mut self, mut messages: pull::Stream) -> bool {
        let runtime = tokio::runtime::Handle::current();
        loop {
            let message = tokio::select! {
                biased;
                _ = self.stopped.changed() => return true,
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::debug!(group = %self.key, %error, "a one-per-service consumer interrupted; made again");
                    return false;
                }
                None => return false,
            };
            let message = Arc::new(message);
            let acked = message.clone();
            let handle = runtime.clone();
            // Acknowledged once the handlers returned, from the link's
            // runtime (the dispatcher thread must not wait on the wire).
            let done: crate::event::SharedDone = Box::new(move |outcome| {
                let kind = match outcome {
                    SharedOutcome::Ran | SharedOutcome::NoMatch => AckKind::Ack,
                    // Unregistered here since: another process takes it
                    // (this one leaves the group at the next change).
                    SharedOutcome::NotHere => AckKind::Nak(Some(Duration::from_secs(1))),
                };
                handle.spawn(async move {
                    if let Err(error) = acked.ack_with(kind).await {
                        // The server hands it out again after `ack_wait`.
                        tracing::warn!(%error, "a one-per-service event's acknowledgement was not sent; it may run again");
                    }
                });
            });
            let delivered = self.receiver.receive_shared(
                &self.key,
                &message.subject,
                message.headers.as_ref(),
                &message.payload,
                done,
            );
            if delivered.is_none() {
                // Refused (logged): never to be handed out again.
                if let Err(error) = message.ack_with(AckKind::Term).await {
                    tracing::debug!(%error, "a refused message's termination was not sent");
                }
            }
        }
    }
}

/// Waits before a reader makes its consumer again, longer after each
/// failure in a row (20 ms doubling to 1 s, jittered); false when told to
/// stop meanwhile.
async fn pause(stopped: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let wait = Duration::from_millis(20)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(1));
    tokio::select! {
        _ = stopped.changed() => false,
        _ = tokio::time::sleep(jittered(wait)) => true,
    }
}

/// What differs between the stream we want and the one the server has.
fn stream_differences(wanted: &stream::Config, found: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let wanted_subjects: BTreeSet<&String> = wanted.subjects.iter().collect();
    let found_subjects: BTreeSet<&String> = found.subjects.iter().collect();
    if wanted_subjects != found_subjects {
        out.push(format!(
            "subjects {:?}, configured {:?}",
            found.subjects, wanted.subjects
        ));
    }
    let seconds = |d: Duration| d.as_secs_f64();
    if found.max_age != wanted.max_age {
        out.push(format!(
            "max_age {} s, configured {} s",
            seconds(found.max_age),
            seconds(wanted.max_age)
        ));
    }
    if found.max_bytes != wanted.max_bytes {
        out.push(format!(
            "max_bytes {}, configured {}",
            found.max_bytes, wanted.max_bytes
        ));
    }
    if found.num_replicas.max(1) != wanted.num_replicas {
        out.push(format!(
            "replicas {}, configured {}",
            found.num_replicas, wanted.num_replicas
        ));
    }
    if found.duplicate_window != wanted.duplicate_window {
        out.push(format!(
            "duplicate_window {} s, configured {} s",
            seconds(found.duplicate_window),
            seconds(wanted.duplicate_window)
        ));
    }
    if found.storage != wanted.storage {
        out.push(format!(
            "storage {:?}, configured {:?}",
            found.storage, wanted.storage
        ));
    }
    if found.retention != wanted.retention {
        out.push(format!(
            "retention {:?}, serve-common needs {:?}",
            found.retention, wanted.retention
        ));
    }
    out
}

/// This process's consumer: reads the stream from `next_read` on, hands
/// each event to the bus once, and is made again (from where it left off)
/// after any fault or when the registrations need another filter.
struct Reader {
    context: js::Context,
    stream_name: String,
    prefix: String,
    bus: EventBus,
    receiver: Arc<Receiver>,
    next_read: Arc<AtomicU64>,
    interest: watch::Receiver<()>,
    stopped: watch::Receiver<bool>,
}

/// Why a consumer was left.
enum Leave {
    Stop,
    Again,
}

impl Reader {
    /// The consumer's filter: the one subject that covers what the
    /// registrations can match, else the whole prefix (servers before
    /// 2.10 take one filter; the bus matches each event anyway).
    fn filter(&self) -> String {
        let mut interest = self.bus.interest();
        for name in [crate::config::SET_EVENT, crate::config::SYNC_EVENT] {
            interest.exact.push(name.into());
        }
        let wanted = super::subjects(&self.prefix, &interest);
        match (wanted.len(), wanted.first()) {
            (1, Some(only)) => only.clone(),
            _ => format!("{}.>", self.prefix),
        }
    }

    async fn run(mut self) {
        let mut failures = 0_u32;
        loop {
            if *self.stopped.borrow() {
                return;
            }
            let filter = self.filter();
            let start = self.next_read.load(Ordering::Acquire).max(1);
            let made = self.make(&filter, start).await;
            let (name, left) = match made {
                Ok((name, messages)) => {
                    let (left, read) = self.read(messages, &filter).await;
                    if read {
                        failures = 0;
                    }
                    (Some(name), left)
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(stream = %self.stream_name, %error, "cannot make this process's JetStream consumer; trying again");
                    } else {
                        tracing::debug!(%error, "JetStream consumer not made");
                    }
                    (None, Leave::Again)
                }
            };
            if let Some(name) = name {
                // The server forgets an unread consumer anyway (after
                // `INACTIVE`): no waiting on this.
                let context = self.context.clone();
                let stream = self.stream_name.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        context.delete_consumer_from_stream(&name, &stream),
                    )
                    .await;
                });
            }
            if matches!(left, Leave::Stop) {
                return;
            }
            failures = failures.saturating_add(1);
            if !pause(&mut self.stopped, failures).await {
                return;
            }
        }
    }

    async fn make(&self, filter: &str, start: u64) -> Result<(String, pull::Stream), String> {
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: AckPolicy::None,
            filter_subject: filter.to_owned(),
            inactive_threshold: INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            description: Some(format!("serve-common pid {}", std::process::id())),
            ..Default::default()
        };
        let consumer: consumer::Consumer<pull::Config> = self
            .context
            .create_consumer_on_stream(config, &self.stream_name)
            .await
            .map_err(|e| e.to_string())?;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(consumer = %name, start, %filter, "JetStream consumer made");
        Ok((name, messages))
    }

    /// Reads until the consumer must be made again; whether it read any.
    async fn read(&mut self, mut messages: pull::Stream, filter: &str) -> (Leave, bool) {
        let mut delivered = 0_u64;
        let mut read = false;
        loop {
            tokio::select! {
                biased;
                _ = self.stopped.changed() => return (Leave::Stop, read),
                Ok(()) = self.interest.changed() => {
                    if self.filter() != filter {
                        return (Leave::Again, read);
                    }
                }
                message = messages.next() => match message {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else {
                            self.receiver.refuse(&message.subject, "a JetStream message without its metadata");
                            continue;
                        };
                        let (stream_seq, consumer_seq, pending) =
                            (info.stream_sequence, info.consumer_sequence, info.pending);
                        if consumer_seq != delivered + 1 {
                            // The server skipped some for us: start again
                            // from the last one handled.
                            tracing::debug!(consumer_seq, delivered, "JetStream consumer out of step; made again");
                            return (Leave::Again, read);
                        }
                        delivered = consumer_seq;
                        read = true;
                        let next = self.next_read.load(Ordering::Acquire);
                        if stream_seq < next {
                            continue;
                        }
                        self.next_read.store(stream_seq.saturating_add(1), Ordering::Release);
                        self.receiver.shared.lag.store(pending, Ordering::Relaxed);
                        self.receiver.receive(&message.subject, message.headers.as_ref(), &message.payload);
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "JetStream consumer interrupted; made again");
                        return (Leave::Again, read);
                    }
                    None => return (Leave::Again, read),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_streams_are_named_field_by_field() {
        let wanted = stream::Config {
            name: "s".into(),
            subjects: vec!["p.>".into()],
            max_age: Duration::from_secs(60),
            num_replicas: 1,
            ..Default::default()
        };
        assert!(stream_differences(&wanted, &wanted).is_empty());
        let found = stream::Config {
            max_age: Duration::from_secs(30),
            subjects: vec!["q.>".into()],
            ..wanted.clone()
        };
        let differences = stream_differences(&wanted, &found);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("subjects"));
        assert!(differences[1].contains("max_age 30 s, configured 60 s"));
    }
}
