//! AF_UNIX SOCK_SEQPACKET sockets in the abstract namespace, through nix
//! (safe wrappers; this crate forbids `unsafe`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    retry(|| {
        socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
    })
}

/// A listening socket bound to `name` in the abstract namespace.
pub(crate) fn listen(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new_abstract(name).map_err(io::Error::from)?;
    retry(|| socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr))?;
    retry(|| socket::listen(&fd, socket::Backlog::new(128).expect("a valid backlog")))?;
    Ok(fd)
}

/// A connection to the listener at `name`, waiting at most `timeout` for
/// room in its backlog (a stuck server's fills up): then `WouldBlock`.
pub(crate) fn connect(name: &[u8], timeout: Duration) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new_abstract(name).map_err(io::Error::from)?;
    // An AF_UNIX connect waits for the backlog under the send timeout.
    let tv = nix::sys::time::TimeVal::from(libc_timeval(timeout));
    retry(|| socket::setsockopt(&fd, sockopt::SendTimeout, &tv))?;
    retry(|| socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr))?;
    let none = nix::sys::time::TimeVal::from(libc_timeval(Duration::ZERO));
    retry(|| socket::setsockopt(&fd, sockopt::SendTimeout, &none))?;
    Ok(fd)
}

/// Accepts one connection.
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    retry(|| socket::accept4(listener.as_fd(), SockFlag::SOCK_CLOEXEC))
}

/// Sends one packet (blocking). A closed peer is an error, not a SIGPIPE.
pub(crate) fn send(fd: &impl AsFd, packet: &[u8]) -> io::Result<()> {
    let sent = retry(|| {
        socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
            packet,
            MsgFlags::MSG_NOSIGNAL,
        )
    })?;
    if sent == packet.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "packet sent in part",
        ))
    }
}

/// Sends one packet without waiting: `Ok(false)` when the socket has no
/// room for it now (nothing was sent).
pub(crate) fn try_send(fd: &impl AsFd, packet: &[u8]) -> io::Result<bool> {
    let sent = retry(|| {
        socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
            packet,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        )
    });
    match sent {
        Ok(n) if n == packet.len() => Ok(true),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "packet sent in part",
        )),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends packets without waiting, as many as the socket takes now, in one
/// system call (`sendmmsg`); how many it took (0 when it had no room).
pub(crate) fn try_send_many(fd: &impl AsFd, packets: &[&[u8]]) -> io::Result<usize> {
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags};
    if let [one] = packets {
        return try_send(fd, one).map(usize::from);
    }
    let iovs: Vec<[io::IoSlice<'_>; 1]> = packets.iter().map(|p| [io::IoSlice::new(p)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = packets
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = iovs
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, control)| MMsgHdr::new(iov, control))
        .collect();
    loop {
        match sendmmsg(fd, &mut messages, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(sent) => return Ok(sent),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet without waiting: `Err` of kind `WouldBlock` when
/// none is there; otherwise as [`recv`].
pub(crate) fn try_recv(fd: &impl AsFd, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    recv_with(fd, buffer, MsgFlags::MSG_DONTWAIT)
}

/// Waits until `fd` can take a packet, at most `timeout`: `Ok(true)` when
/// it can (or has hung up: the next send says so), `Ok(false)` on timeout.
pub(crate) fn wait_writable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    loop {
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet into `buffer`; `Ok(None)` at end of stream. A packet
/// longer than the buffer is reported as `InvalidData` (and dropped).
pub(crate) fn recv(fd: &impl AsFd, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    recv_with(fd, buffer, MsgFlags::empty())
}

fn recv_with(fd: &impl AsFd, buffer: &mut [u8], flags: MsgFlags) -> io::Result<Option<usize>> {
    let len = retry(|| {
        socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
            buffer,
            MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC | flags,
        )
    })?;
    if len == 0 {
        // End of stream, or an empty packet a peer sent on purpose: only a
        // hang-up tells them apart. (nix has no POLLRDHUP constant, so its
        // `revents` is `None` when that bit is set: a hang-up too.)
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
        let mut fds = [PollFd::new(fd.as_fd(), rdhup)];
        let hung_up = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds[0]
                .revents()
                .is_none_or(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(_) => true,
        };
        if hung_up {
            return Ok(None);
        }
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty packet"));
    }
    if len > buffer.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("packet of {len} bytes exceeds the largest valid packet"),
        ));
    }
    Ok(Some(len))
}

/// Receives one packet, waiting until `deadline` at most (one deadline for
/// however many calls): after it, an error of kind `TimedOut`.
pub(crate) fn recv_until(
    fd: &impl AsFd,
    buffer: &mut [u8],
    deadline: std::time::Instant,
) -> io::Result<Option<usize>> {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // A zero timeout would mean "none".
        if left < Duration::from_micros(1) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        set_recv_timeout(fd, Some(left))?;
        match recv(fd, buffer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => {
                set_recv_timeout(fd, None)?;
                return other;
            }
        }
    }
}

/// The peer's (uid, pid), from SO_PEERCRED.
pub(crate) fn peer(fd: &impl AsFd) -> io::Result<(u32, i32)> {
    let cred = retry(|| socket::getsockopt(&fd.as_fd(), sockopt::PeerCredentials))?;
    Ok((cred.uid(), cred.pid()))
}

/// Sets (or clears) the receive timeout.
pub(crate) fn set_recv_timeout(fd: &impl AsFd, timeout: Option<Duration>) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::from(match timeout {
        Some(t) => libc_timeval(t),
        None => libc_timeval(Duration::ZERO),
    });
    retry(|| socket::setsockopt(&fd.as_fd(), sockopt::ReceiveTimeout, &tv))
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

/// Stops receiving: what is queued can still be read, then reads see the
/// end of the stream, and the peer's sends fail.
pub(crate) fn shutdown_read(fd: &impl AsFd) {
    let _ = socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        socket::Shutdown::Read,
    );
}

/// Shuts both directions down: blocked reads and writes on it return.
pub(crate) fn shutdown(fd: &impl AsFd) {
    let _ = socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        socket::Shutdown::Both,
    );
}
