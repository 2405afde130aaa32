//! The group server: one process per service, members grouped by id, every
//! message forwarded to every other member of the sender's group.
//!
//! Threads, not an event loop: a service has a handful of processes. The
//! accept loop never reads: each connection gets a thread that reads its
//! greeting with a deadline, then forwards what it reads. Each member has a
//! writer thread and an outgoing queue bounded in bytes. A sender facing a
//! full queue waits (backpressure: a reader that is merely busy loses
//! nothing); a member whose queue stays full past the stall deadline is
//! disconnected, that member only, with a log line naming it.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::frame::{self, Decoder};
use super::{socket, Greeting, ServerOptions, Welcome};

struct Outgoing {
    /// Messages as packets, in order, with their payload size.
    messages: VecDeque<(Arc<Vec<Vec<u8>>>, usize)>,
    bytes: usize,
    closed: bool,
    /// When the queue last became full; cleared once it drains below half.
    /// The stall deadline runs from here, so a member that reads just
    /// enough to take one message now and then is still cut off.
    full_since: Option<Instant>,
}

struct Member {
    id: u64,
    pid: i32,
    group: String,
    fd: OwnedFd,
    out: Mutex<Outgoing>,
    /// Signalled when the queue gains a message or room, or closes.
    changed: Condvar,
    alive: AtomicBool,
}

impl Member {
    fn describe(&self) -> String {
        format!(
            "member {} (pid {}) of group {:?}",
            self.id, self.pid, self.group
        )
    }

    /// Ends the member: its reader and writer threads return.
    fn disconnect(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            socket::shutdown(&self.fd);
            self.out.lock().closed = true;
            self.changed.notify_all();
        }
    }
}

struct Server {
    options: ServerOptions,
    uid: u32,
    groups: Mutex<HashMap<String, Vec<Arc<Member>>>>,
    next_id: AtomicU64,
}

/// Runs the server on `listener` until a shutdown request. Prints nothing:
/// the address was handed over already.
pub(crate) fn run(listener: OwnedFd, options: ServerOptions) -> ! {
    let server = Arc::new(Server {
        options,
        uid: nix::unistd::getuid().as_raw(),
        groups: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    tracing::info!(pid = std::process::id(), "IPC server listening");
    loop {
        match socket::accept(&listener) {
            Ok(fd) => {
                let server = server.clone();
                let spawned = std::thread::Builder::new()
                    .name("ipc-member".into())
                    .spawn(move || server.serve(fd));
                if let Err(error) = spawned {
                    tracing::error!(%error, "cannot start a thread for a connection; dropped it");
                }
            }
            Err(error) => {
                tracing::error!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Server {
    fn serve(self: Arc<Self>, fd: OwnedFd) {
        let (uid, pid) = match socket::peer(&fd) {
            Ok(peer) => peer,
            Err(error) => {
                tracing::warn!(%error, "cannot read a connection's credentials; refused");
                return;
            }
        };
        if uid != self.uid {
            tracing::warn!(peer_uid = uid, peer_pid = pid, server_uid = self.uid,
                "refused a connection from another user (uid {uid}, pid {pid}): only uid {} may use this server", self.uid);
            return;
        }
        // The greeting, with a deadline: a silent peer holds only this thread.
        let _ = socket::set_recv_timeout(&fd, Some(self.options.greeting_timeout));
        let mut decoder = Decoder::new(4096);
        let mut buffer = vec![0; frame::MAX_PACKET];
        let greeting = loop {
            match socket::recv(&fd, &mut buffer) {
                Ok(Some(len)) => match decoder.push(&buffer[..len]) {
                    Ok(Some(message)) => break ciborium::from_reader::<Greeting, _>(&message[..]),
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(peer_pid = pid, %error, "malformed greeting; connection closed");
                        return;
                    }
                },
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(peer_pid = pid, %error, "no greeting in time; connection closed");
                    return;
                }
            }
        };
        let _ = socket::set_recv_timeout(&fd, None);
        match greeting {
            Ok(Greeting::Join { group }) => self.member(fd, pid, group),
            Ok(Greeting::Shutdown) => {
                tracing::info!(requested_by = pid, "IPC server shutting down");
                std::process::exit(0);
            }
            Err(error) => {
                tracing::warn!(peer_pid = pid, %error, "unreadable greeting; connection closed")
            }
        }
    }

    fn member(self: Arc<Self>, fd: OwnedFd, pid: i32, group: String) {
        let member = Arc::new(Member {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pid,
            group: group.clone(),
            fd,
            out: Mutex::new(Outgoing {
                messages: VecDeque::new(),
                bytes: 0,
                closed: false,
                full_since: None,
            }),
            changed: Condvar::new(),
            alive: AtomicBool::new(true),
        });
        self.groups
            .lock()
            .entry(group)
            .or_default()
            .push(member.clone());
        tracing::debug!(member = %member.describe(), "joined");
        // The welcome goes before anything forwarded: the writer starts after.
        let mut welcome = Vec::new();
        let sent = ciborium::into_writer(
            &Welcome {
                member: member.id,
                max_message: self.options.max_message as u64,
            },
            &mut welcome,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| {
            socket::send(
                &member.fd,
                &frame::encode(&welcome, usize::MAX).expect("small")[0],
            )
        });
        if let Err(error) = sent {
            tracing::debug!(member = %member.describe(), %error, "cannot welcome; disconnected");
            member.disconnect();
        }
        let writer = member.clone();
        let queue_bytes = self.options.queue_bytes;
        let spawned = std::thread::Builder::new()
            .name("ipc-writer".into())
            .spawn(move || write_loop(&writer, queue_bytes));
        if let Err(error) = spawned {
            tracing::error!(%error, member = %member.describe(), "cannot start its writer; disconnected");
            member.disconnect();
        }
        self.read_loop(&member);
        member.disconnect();
        let mut groups = self.groups.lock();
        if let Some(members) = groups.get_mut(&member.group) {
            members.retain(|m| m.id != member.id);
            if members.is_empty() {
                groups.remove(&member.group);
            }
        }
        tracing::debug!(member = %member.describe(), "left");
    }

    fn read_loop(&self, member: &Arc<Member>) {
        let mut decoder = Decoder::new(self.options.max_message);
        let mut buffer = vec![0; frame::MAX_PACKET];
        while member.alive.load(Ordering::Acquire) {
            let len = match socket::recv(&member.fd, &mut buffer) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(member = %member.describe(), %error, "malformed packet dropped");
                    continue;
                }
                Err(_) => return,
            };
            let pushed = decoder.push(&buffer[..len]);
            if let Some(error) = decoder.take_dropped() {
                tracing::warn!(member = %member.describe(), %error, "incomplete message dropped");
            }
            let message = match pushed {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(member = %member.describe(), %error, "malformed frame dropped");
                    continue;
                }
            };
            // Re-framed once, shared by every recipient.
            let packets = match frame::encode(&message, self.options.max_message) {
                Ok(packets) => Arc::new(packets),
                Err(error) => {
                    tracing::warn!(member = %member.describe(), %error, "message dropped");
                    continue;
                }
            };
            let recipients: Vec<Arc<Member>> = self
                .groups
                .lock()
                .get(&member.group)
                .map(|members| {
                    members
                        .iter()
                        .filter(|m| m.id != member.id)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for recipient in recipients {
                self.enqueue(&recipient, &packets, message.len());
            }
        }
    }

    /// Queues a message for `recipient`, waiting while its queue is full;
    /// disconnects it if it stays full past the stall deadline.
    fn enqueue(&self, recipient: &Member, packets: &Arc<Vec<Vec<u8>>>, bytes: usize) {
        let mut out = recipient.out.lock();
        // A message larger than the whole queue still goes, alone.
        while !out.closed && out.bytes > 0 && out.bytes + bytes > self.options.queue_bytes {
            let full_since = *out.full_since.get_or_insert_with(Instant::now);
            let deadline = full_since + self.options.stall_timeout;
            if recipient.changed.wait_until(&mut out, deadline).timed_out() {
                let queued = out.bytes;
                drop(out);
                tracing::warn!(member = %recipient.describe(), queued_bytes = queued,
                    stalled_for = ?self.options.stall_timeout,
                    "disconnecting a member that stopped reading: its queue stayed full");
                recipient.disconnect();
                return;
            }
        }
        if out.closed {
            return;
        }
        out.messages.push_back((packets.clone(), bytes));
        out.bytes += bytes;
        drop(out);
        recipient.changed.notify_all();
    }
}

fn write_loop(member: &Member, queue_bytes: usize) {
    loop {
        let (packets, bytes) = {
            let mut out = member.out.lock();
            loop {
                if out.closed {
                    return;
                }
                if let Some(next) = out.messages.pop_front() {
                    break next;
                }
                member.changed.wait(&mut out);
            }
        };
        for packet in packets.iter() {
            if let Err(error) = socket::send(&member.fd, packet) {
                tracing::debug!(member = %member.describe(), %error, "send failed; disconnecting");
                member.disconnect();
                return;
            }
        }
        let mut out = member.out.lock();
        out.bytes -= bytes;
        if out.bytes <= queue_bytes / 2 {
            out.full_since = None;
        }
        drop(out);
        member.changed.notify_all();
    }
}

/// Prints the address for the parent, then serves.
pub(crate) fn serve_and_announce(listener: OwnedFd, address: &[u8], options: ServerOptions) -> ! {
    use base64::Engine as _;
    let line = base64::engine::general_purpose::STANDARD.encode(address);
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(1);
    }
    run(listener, options)
}
