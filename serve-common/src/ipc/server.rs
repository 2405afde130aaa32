//! The group server: one process per service, members grouped by id, every
//! message forwarded to every other member of the sender's group.
//!
//! Threads, not an event loop: a service has a handful of processes. The
//! accept loop checks the peer's uid, then gives each connection a thread
//! that reads its greeting (one deadline for the whole greeting) and then
//! forwards what it reads.
//!
//! The fan-out never waits on a recipient. A reader writes each packet it
//! received, as it came, straight to every other member of the group
//! without blocking (`MSG_DONTWAIT`) while that member has nothing queued;
//! what a member's socket refuses goes to its queue, which its writer
//! thread drains, and everything after it for that member follows through
//! the queue until it is empty, so every member sees every sender's
//! messages in order. A member whose queue would grow past
//! [`ServerOptions::queue_bytes`], or whose writer made no progress for
//! [`ServerOptions::stall_timeout`], is cut off (logged, with the number of
//! messages discarded, which the member learns when it rejoins); the
//! others lose nothing and wait for nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::frame::{self, Decoder, FrameCheck, PacketKind};
use super::{socket, Greeting, ServerOptions, Welcome};

/// Bookkeeping counted per queued packet on top of its bytes, so a flood
/// of tiny messages is bounded too.
const PACKET_OVERHEAD: usize = 64;
/// The largest greeting.
const MAX_GREETING: usize = 4096;
/// Remembered cut-offs (for the members' rejoin), at most.
const MAX_CUT_OFFS: usize = 1024;
/// Packets a reader takes in one go (and a member's socket in one call).
const BATCH: usize = 64;
/// A reader's buffer: a batch of small packets, and room for the largest.
const ARENA: usize = 4 * frame::MAX_PACKET;

struct Outgoing {
    /// Packets the member's socket refused so far, in order.
    queue: VecDeque<Arc<[u8]>>,
    /// Their size, with [`PACKET_OVERHEAD`] each.
    bytes: usize,
    closed: bool,
    /// Closed by a cut-off (not by the member leaving).
    cut_off: bool,
    /// Messages for it that arrived after its cut-off, before it left the
    /// group: counted as missed too.
    late: u64,
    /// When the queue last became non-empty or its writer last sent: the
    /// stall deadline runs from here.
    progress: Instant,
}

struct Member {
    id: u64,
    pid: i32,
    /// In a queue group: never handed a message.
    send_only: bool,
    /// In a queue group: messages handed to it, and those it said it
    /// handled (see [`QUEUE_ACK`]).
    handed: AtomicU64,
    acked: AtomicU64,
    group: Arc<Group>,
    fd: OwnedFd,
    out: Mutex<Outgoing>,
    /// Wakes the writer when its queue gains its first packet or closes.
    wake: Condvar,
}

impl Member {
    fn describe(&self) -> String {
        format!(
            "member {} (pid {}) of group {:?}",
            self.id, self.pid, self.group.name
        )
    }
}

/// A queue group member's acknowledgement: `[QUEUE_ACK][u64 LE n]`, "n
/// more messages handed to me are handled" (never forwarded). No CBOR
/// item starts with this byte, so no event is taken for one.
pub(crate) const QUEUE_ACK: u8 = 0xff;

/// The count of an acknowledgement, if `message` (one message's packets)
/// is one.
fn queue_ack(message: &[&[u8]]) -> Option<u64> {
    match message {
        [packet] if packet.len() == 10 && packet[0] == frame::WHOLE && packet[1] == QUEUE_ACK => {
            Some(u64::from_le_bytes(packet[2..10].try_into().ok()?))
        }
        _ => None,
    }
}

/// Whole messages among `packets` (first parts and whole ones).
fn messages_in<P: AsRef<[u8]>>(packets: impl IntoIterator<Item = P>) -> u64 {
    packets
        .into_iter()
        .filter(|p| matches!(p.as_ref().first(), Some(&frame::WHOLE | &frame::FIRST)))
        .count() as u64
}

/// The packets copied once, to be shared by every queue and the history
/// that keep them.
fn shared_copy<'a>(shared: &'a mut Option<Vec<Arc<[u8]>>>, packets: &[&[u8]]) -> &'a [Arc<[u8]>] {
    shared.get_or_insert_with(|| packets.iter().map(|p| Arc::from(*p)).collect())
}

/// Closes `member` (its reader and writer return); the number of messages
/// its queue held, now discarded. Called with its queue locked.
fn close_locked(member: &Member, out: &mut Outgoing) -> u64 {
    if out.closed {
        return 0;
    }
    socket::shutdown(&member.fd);
    out.closed = true;
    let discarded = messages_in(&out.queue);
    out.queue.clear();
    out.bytes = 0;
    member.wake.notify_all();
    discarded
}

/// What a restarted server forwarded in its first moments, for members
/// that rejoin late (see [`ServerOptions::rejoin_window`]).
#[derive(Default)]
struct History {
    packets: Vec<Arc<[u8]>>,
    bytes: usize,
    overflowed: bool,
}

struct Group {
    name: String,
    /// A queue group: each message goes to one member.
    queue: bool,
    /// A queue group's round robin.
    next: AtomicUsize,
    /// A queue group's messages no member could take.
    unrouted: AtomicU64,
    members: RwLock<Vec<Arc<Member>>>,
    /// Whether `history` may still grow (checked without its lock).
    recording: AtomicBool,
    history: Mutex<Option<History>>,
}

struct Server {
    options: ServerOptions,
    uid: u32,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    next_id: AtomicU64,
    /// Set when this server replaced one that died: until then, what it
    /// forwards is kept for members that rejoin.
    replay_until: Option<Instant>,
    /// (pid, group) of every member that joined while recording: replayed
    /// to once at most.
    joined: Mutex<HashSet<(i32, String)>>,
    /// Messages discarded when a member was cut off, by (pid, group),
    /// until it rejoins.
    cut_offs: Mutex<HashMap<(i32, String), u64>>,
    stopping: AtomicBool,
    /// Member readers still running, for the shutdown's drain.
    readers: Mutex<usize>,
    settled: Condvar,
}

/// Runs the server on `listener` until a shutdown request. Prints nothing:
/// the address was handed over already. `generation` counts the servers
/// that ran at this address before this one.
pub(crate) fn run(listener: OwnedFd, options: ServerOptions, generation: u64) -> ! {
    let replay_until = (generation > 0).then(|| Instant::now() + options.rejoin_window);
    let server = Arc::new(Server {
        options,
        uid: nix::unistd::getuid().as_raw(),
        groups: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        replay_until,
        joined: Mutex::new(HashSet::new()),
        cut_offs: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        readers: Mutex::new(0),
        settled: Condvar::new(),
    });
    tracing::info!(pid = std::process::id(), generation, "IPC server listening");
    loop {
        let fd = match socket::accept(&listener) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::error!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if server.stopping.load(Ordering::Acquire) {
            continue;
        }
        // Credentials first: a connection from another user costs no thread.
        let (uid, pid) = match socket::peer(&fd) {
            Ok(peer) => peer,
            Err(error) => {
                tracing::warn!(%error, "cannot read a connection's credentials; refused");
                continue;
            }
        };
        if uid != server.uid {
            tracing::warn!(peer_uid = uid, peer_pid = pid, server_uid = server.uid,
                "refused a connection from another user (uid {uid}, pid {pid}): only uid {} may use this server", server.uid);
            continue;
        }
        let server = server.clone();
        let spawned = std::thread::Builder::new()
            .name("ipc-member".into())
            .spawn(move || server.serve(fd, pid));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a thread for a connection; dropped it");
        }
    }
}

impl Server {
    fn serve(self: Arc<Self>, fd: OwnedFd, pid: i32) {
        let greeting = match self.greeting(&fd, pid) {
            Some(greeting) => greeting,
            None => return,
        };
        match greeting {
            Greeting::Join {
                group,
                rejoin,
                send_only,
            } => self.member(fd, pid, group, rejoin, send_only),
            Greeting::Shutdown => self.shutdown(pid),
        }
    }

    /// Reads the greeting. One deadline covers it all: a peer that
    /// trickles bytes is closed as surely as a silent one.
    fn greeting(&self, fd: &OwnedFd, pid: i32) -> Option<Greeting> {
        let deadline = Instant::now() + self.options.greeting_timeout;
        let mut decoder = Decoder::new(MAX_GREETING);
        let mut buffer = vec![0; MAX_GREETING + 5];
        let greeting = loop {
            match socket::recv_until(fd, &mut buffer, deadline) {
                Ok(Some(len)) => match decoder.push(&buffer[..len]) {
                    Ok(Some(message)) => break ciborium::from_reader::<Greeting, _>(&message[..]),
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(peer_pid = pid, %error, "malformed greeting; connection closed");
                        return None;
                    }
                },
                Ok(None) => return None,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::warn!(peer_pid = pid, timeout = ?self.options.greeting_timeout,
                        "no complete greeting in time; connection closed");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(peer_pid = pid, %error, "no greeting; connection closed");
                    return None;
                }
            }
        };
        match greeting {
            Ok(greeting) => Some(greeting),
            Err(error) => {
                tracing::warn!(peer_pid = pid, %error, "unreadable greeting; connection closed");
                None
            }
        }
    }

    /// Whether this is a restarted server's first moments, when what it
    /// forwards is kept for members that rejoin late.
    fn replaying(&self) -> bool {
        self.replay_until
            .is_some_and(|until| Instant::now() < until)
    }

    fn member(
        self: Arc<Self>,
        fd: OwnedFd,
        pid: i32,
        group: String,
        rejoin: bool,
        send_only: bool,
    ) {
        let key = (pid, group.clone());
        let missed = self.cut_offs.lock().remove(&key);
        // Lock order: the group map, then a group's members. Holding the
        // map until the members are locked keeps a leaving member from
        // removing the group this one is joining.
        let mut groups = self.groups.lock();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let replaying = self.replaying();
        let group = groups
            .entry(group.clone())
            .or_insert_with(|| {
                Arc::new(Group {
                    queue: group.starts_with(super::QUEUE_GROUP_PREFIX),
                    name: group,
                    members: RwLock::new(Vec::new()),
                    recording: AtomicBool::new(replaying),
                    history: Mutex::new(replaying.then(History::default)),
                    next: AtomicUsize::new(0),
                    unrouted: AtomicU64::new(0),
                })
            })
            .clone();
        let member = Arc::new(Member {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pid,
            send_only,
            handed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            group: group.clone(),
            fd,
            out: Mutex::new(Outgoing {
                queue: VecDeque::new(),
                bytes: 0,
                closed: false,
                cut_off: false,
                late: 0,
                progress: Instant::now(),
            }),
            wake: Condvar::new(),
        });
        let writer = member.clone();
        let server = self.clone();
        if let Err(error) = std::thread::Builder::new()
            .name("ipc-writer".into())
            .spawn(move || server.write_loop(&writer))
        {
            tracing::error!(%error, member = %member.describe(), "cannot start its writer; closed");
            return;
        }
        {
            // Under the group's write lock no reader forwards: the welcome,
            // then any replay, then what is forwarded from now on.
            let mut members = group.members.write();
            drop(groups);
            let first_join = replaying && self.joined.lock().insert(key.clone());
            let replay: Vec<Arc<[u8]>> = match &*group.history.lock() {
                Some(history) if rejoin && first_join => {
                    if history.overflowed {
                        tracing::warn!(member = %member.describe(),
                            "replaying only the start of what this server forwarded since it started (over queue_bytes)");
                    }
                    history.packets.clone()
                }
                _ => Vec::new(),
            };
            let mut welcome = Vec::new();
            let encoded = ciborium::into_writer(
                &Welcome {
                    member: member.id,
                    max_message: self.options.max_message as u64,
                    server_pid: std::process::id(),
                    missed,
                    replayed: messages_in(&replay),
                },
                &mut welcome,
            );
            // The first packet on an empty socket: it fits.
            let sent = encoded.is_ok()
                && frame::encode(&welcome, usize::MAX)
                    .ok()
                    .and_then(|packets| socket::try_send(&member.fd, &packets[0]).ok())
                    == Some(true);
            let mut out = member.out.lock();
            if !sent {
                tracing::debug!(member = %member.describe(), "cannot welcome; closed");
                close_locked(&member, &mut out);
                // Its next try is owed the same.
                if let Some(missed) = missed {
                    self.cut_offs.lock().insert(key.clone(), missed);
                }
                if first_join {
                    self.joined.lock().remove(&key);
                }
                return;
            }
            if !replay.is_empty() {
                tracing::info!(member = %member.describe(), messages = messages_in(&replay),
                    "replaying to a member that rejoined late what it missed since this server started");
                out.bytes = replay.iter().map(|p| p.len() + PACKET_OVERHEAD).sum();
                out.queue.extend(replay);
                out.progress = Instant::now();
                member.wake.notify_all();
            }
            drop(out);
            *self.readers.lock() += 1;
            members.push(member.clone());
        }
        tracing::debug!(member = %member.describe(), rejoin, "joined");
        self.read_loop(&member);
        let stopping = self.stopping.load(Ordering::Acquire);
        if !stopping {
            // At shutdown the writer still drains what the member is owed.
            let mut groups = self.groups.lock();
            let mut members = group.members.write();
            members.retain(|m| m.id != member.id);
            if members.is_empty() {
                groups.remove(&group.name);
            }
            drop((members, groups));
            let mut out = member.out.lock();
            close_locked(&member, &mut out);
            let lost = member
                .handed
                .load(Ordering::Relaxed)
                .saturating_sub(member.acked.load(Ordering::Relaxed));
            if group.queue && lost > 0 {
                tracing::warn!(member = %member.describe(), lost,
                    "a queue group's member left with {lost} messages handed to it and not handled: lost");
            }
            if out.cut_off && out.late > 0 {
                *self.cut_offs.lock().entry(key).or_default() += out.late;
            }
        }
        tracing::debug!(member = %member.describe(), "left");
        *self.readers.lock() -= 1;
        self.settled.notify_all();
    }

    fn read_loop(&self, member: &Arc<Member>) {
        let mut check = FrameCheck::new(self.options.max_message);
        let mut arena = vec![0; ARENA];
        // Whole messages read and not forwarded yet, as (start, len) in
        // `arena`: what is already there when the reader wakes is
        // forwarded together, so each member's socket takes it in one call.
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
        // The parts of a longer message, forwarded once it is complete (so
        // no member sees two senders' parts interleaved).
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let flush = |spans: &mut Vec<(usize, usize)>, arena: &[u8]| {
            if !spans.is_empty() {
                let packets: Vec<&[u8]> = spans
                    .iter()
                    .map(|&(at, len)| &arena[at..at + len])
                    .collect();
                self.fan_out(member, &packets);
                spans.clear();
            }
        };
        loop {
            let used = spans.last().map_or(0, |&(at, len)| at + len);
            let room = &mut arena[used..used + frame::MAX_PACKET];
            // Take what is there without waiting; when nothing is, wait for
            // the next packet and forward it at once (the latency path
            // costs no extra system call), batching only what a burst
            // leaves waiting.
            let mut waited = false;
            let received = match socket::try_recv(&member.fd, room) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if !spans.is_empty() {
                        flush(&mut spans, &arena);
                        continue;
                    }
                    waited = true;
                    socket::recv(&member.fd, room)
                }
                other => other,
            };
            let len = match received {
                Ok(Some(len)) => len,
                Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(member = %member.describe(), %error, "malformed packet dropped");
                    check.reset();
                    parts.clear();
                    continue;
                }
                Ok(None) | Err(_) => {
                    flush(&mut spans, &arena);
                    return;
                }
            };
            let packet = &arena[used..used + len];
            let kind = check.check(packet);
            if let Some(error) = check.take_dropped() {
                tracing::warn!(member = %member.describe(), %error, "incomplete message dropped");
                parts.clear();
            }
            match kind {
                Ok(PacketKind::Whole) | Ok(PacketKind::First { complete: true }) => {
                    spans.push((used, len));
                }
                Ok(PacketKind::First { complete: false }) => {
                    parts.clear();
                    parts.push(packet.to_vec());
                }
                Ok(PacketKind::More { complete }) => {
                    parts.push(packet.to_vec());
                    if complete {
                        // What came before it goes first.
                        flush(&mut spans, &arena);
                        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                        self.fan_out(member, &slices);
                        parts.clear();
                    }
                }
                Err(error) => {
                    tracing::warn!(member = %member.describe(), %error, "malformed frame dropped");
                    parts.clear();
                }
            }
            let used = spans.last().map_or(0, |&(at, len)| at + len);
            if waited || spans.len() >= BATCH || used + frame::MAX_PACKET > ARENA {
                flush(&mut spans, &arena);
            }
        }
    }

    /// Forwards whole messages' packets, in order, to every other member
    /// of the group.
    fn fan_out(&self, from: &Member, packets: &[&[u8]]) {
        if from.group.queue {
            return self.hand_out(from, packets);
        }
        // Shared by every member that has to queue it: copied once.
        let mut shared: Option<Vec<Arc<[u8]>>> = None;
        let members = from.group.members.read();
        for member in members.iter() {
            if member.id != from.id {
                self.forward(member, packets, &mut shared);
            }
        }
        if from.group.recording.load(Ordering::Relaxed) {
            let mut history = from.group.history.lock();
            match &mut *history {
                Some(history) if self.replaying() => {
                    let bytes: usize = packets.iter().map(|p| p.len() + PACKET_OVERHEAD).sum();
                    // Half a queue at most: a member replayed all of it
                    // still has room for what follows.
                    if history.overflowed || history.bytes + bytes > self.options.queue_bytes / 2 {
                        history.overflowed = true;
                    } else {
                        history
                            .packets
                            .extend(shared_copy(&mut shared, packets).iter().cloned());
                        history.bytes += bytes;
                    }
                }
                _ => {
                    *history = None;
                    from.group.recording.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    /// A queue group's fan-out: each message to one member, in turn.
    /// `packets` are whole messages, or the parts of one.
    fn hand_out(&self, from: &Member, packets: &[&[u8]]) {
        let whole = packets
            .first()
            .is_some_and(|p| p.first() == Some(&frame::WHOLE));
        let messages: Vec<&[&[u8]]> = if whole {
            packets.chunks(1).collect()
        } else {
            vec![packets]
        };
        let members = from.group.members.read();
        for message in messages {
            if let Some(n) = queue_ack(message) {
                from.acked.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            let takers: Vec<&Arc<Member>> = members
                .iter()
                .filter(|m| !m.send_only && !m.out.lock().closed)
                .collect();
            if takers.is_empty() {
                let n = from.group.unrouted.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(group = %from.group.name, unrouted = n,
                        "no member of a queue group can take a message: dropped ({n} so far)");
                }
                continue;
            }
            let turn = from.group.next.fetch_add(1, Ordering::Relaxed) % takers.len();
            let to = takers[turn];
            // Counted before: one that closes meanwhile counts it as lost.
            to.handed.fetch_add(1, Ordering::Relaxed);
            self.forward(to, message, &mut None);
        }
    }

    fn forward(&self, to: &Member, packets: &[&[u8]], shared: &mut Option<Vec<Arc<[u8]>>>) {
        let mut out = to.out.lock();
        if out.closed {
            if out.cut_off {
                out.late += messages_in(packets);
            }
            return;
        }
        let mut sent = 0;
        if out.queue.is_empty() {
            while sent < packets.len() {
                match socket::try_send_many(&to.fd, &packets[sent..]) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(error) => {
                        close_locked(to, &mut out);
                        drop(out);
                        tracing::debug!(member = %to.describe(), %error, "send failed; disconnected");
                        return;
                    }
                }
            }
            if sent == packets.len() {
                return;
            }
        }
        let rest = &packets[sent..];
        let bytes: usize = rest.iter().map(|p| p.len() + PACKET_OVERHEAD).sum();
        // A message larger than the whole queue still goes, alone.
        if out.bytes > 0 && out.bytes + bytes > self.options.queue_bytes {
            let queued = out.bytes;
            out.cut_off = true;
            let discarded = close_locked(to, &mut out) + messages_in(rest);
            drop(out);
            self.cut_off(
                to,
                discarded,
                &format!(
                    "it is not reading: {queued} bytes queued for it, over queue_bytes ({})",
                    self.options.queue_bytes
                ),
            );
            return;
        }
        let shared = shared_copy(shared, packets);
        let was_empty = out.queue.is_empty();
        out.queue.extend(shared[sent..].iter().cloned());
        out.bytes += bytes;
        if was_empty {
            out.progress = Instant::now();
            drop(out);
            to.wake.notify_all();
        }
    }

    /// Logs and remembers a cut-off: the member learns how many messages
    /// it missed when it rejoins.
    fn cut_off(&self, member: &Member, discarded: u64, why: &str) {
        tracing::warn!(member = %member.describe(), discarded_messages = discarded,
            "cutting off {}: {why}; {discarded} messages discarded for it (it may rejoin)",
            member.describe());
        let mut cut_offs = self.cut_offs.lock();
        if cut_offs.len() >= MAX_CUT_OFFS {
            cut_offs.clear();
        }
        *cut_offs
            .entry((member.pid, member.group.name.clone()))
            .or_default() += discarded;
    }

    /// Drains `member`'s queue as its socket takes it; cuts it off when it
    /// makes no progress for the stall timeout.
    fn write_loop(&self, member: &Member) {
        let stall = self.options.stall_timeout;
        let mut out = member.out.lock();
        loop {
            if out.closed {
                return;
            }
            if out.queue.is_empty() {
                if self.stopping.load(Ordering::Acquire) {
                    self.settled.notify_all();
                }
                member.wake.wait(&mut out);
                continue;
            }
            while !out.queue.is_empty() {
                let batch: Vec<&[u8]> = out.queue.iter().take(BATCH).map(|p| &p[..]).collect();
                match socket::try_send_many(&member.fd, &batch) {
                    Ok(0) => break,
                    Ok(sent) => {
                        let bytes: usize = batch[..sent]
                            .iter()
                            .map(|p| p.len() + PACKET_OVERHEAD)
                            .sum();
                        drop(batch);
                        out.queue.drain(..sent);
                        out.bytes -= bytes;
                        out.progress = Instant::now();
                    }
                    Err(error) => {
                        close_locked(member, &mut out);
                        drop(out);
                        tracing::debug!(member = %member.describe(), %error, "send failed; disconnected");
                        return;
                    }
                }
            }
            if out.queue.is_empty() {
                continue;
            }
            let deadline = out.progress + stall;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let queued = out.bytes;
                out.cut_off = true;
                let discarded = close_locked(member, &mut out);
                drop(out);
                self.cut_off(
                    member,
                    discarded,
                    &format!("it read nothing for {stall:?} with {queued} bytes queued for it"),
                );
                return;
            }
            drop(out);
            // Waits without the lock: readers keep queueing meanwhile.
            let _ = socket::wait_writable(&member.fd, left.min(Duration::from_secs(1)));
            out = member.out.lock();
        }
    }

    /// Stops: takes no new connections, forwards what members had sent,
    /// lets each member's queue drain (within the drain timeout), exits.
    fn shutdown(&self, requested_by: i32) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(requested_by, "IPC server shutting down");
        let deadline = Instant::now() + self.options.drain_timeout;
        let members = || -> Vec<Arc<Member>> {
            self.groups
                .lock()
                .values()
                .flat_map(|g| g.members.read().clone())
                .collect()
        };
        // What members sent before this stays readable; then their reads end.
        for member in members() {
            socket::shutdown_read(&member.fd);
        }
        let mut readers = self.readers.lock();
        while *readers > 0 && !self.settled.wait_until(&mut readers, deadline).timed_out() {}
        drop(readers);
        let undelivered = loop {
            let queued: u64 = members()
                .iter()
                .map(|m| messages_in(&m.out.lock().queue))
                .sum();
            if queued == 0 || Instant::now() >= deadline {
                break queued;
            }
            // Writers signal as they empty their queues; the timeout only
            // bounds a missed signal.
            let mut readers = self.readers.lock();
            let _ = self
                .settled
                .wait_for(&mut readers, Duration::from_millis(20));
        };
        if undelivered > 0 {
            tracing::warn!(
                undelivered,
                timeout = ?self.options.drain_timeout,
                "IPC server stopping with messages its members did not read in time"
            );
        }
        let _ = std::io::stderr().flush();
        std::process::exit(0);
    }
}

/// Prints the address for the parent, then serves.
pub(crate) fn serve_and_announce(
    listener: OwnedFd,
    address: &[u8],
    options: ServerOptions,
    generation: u64,
) -> ! {
    use base64::Engine as _;
    let line = base64::engine::general_purpose::STANDARD.encode(address);
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(1);
    }
    run(listener, options, generation)
}
