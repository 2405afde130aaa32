//! Group sockets for tokio: the same connection, read and written through
//! `AsyncFd` instead of blocking calls.

use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use super::frame::{self, Decoder};
use super::{socket, IpcError};

/// A group member for async code, from [`join_group_async`](super::join_group_async).
///
/// `recv` is cancellation-safe: a dropped `recv` future loses no message
/// (a partly received one stays in the decoder for the next call). A
/// dropped `send` of a message longer than one packet (64 KiB) may leave
/// it half-sent; the receivers drop the broken message and go on.
///
/// Needs the `tokio` feature.
pub struct AsyncGroupSocket<T> {
    fd: Arc<AsyncFd<OwnedFd>>,
    group: String,
    max_message: usize,
    send_lock: Arc<tokio::sync::Mutex<()>>,
    recv_state: Arc<tokio::sync::Mutex<(Decoder, Vec<u8>)>>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for AsyncGroupSocket<T> {
    fn clone(&self) -> Self {
        Self {
            fd: self.fd.clone(),
            group: self.group.clone(),
            max_message: self.max_message,
            send_lock: self.send_lock.clone(),
            recv_state: self.recv_state.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for AsyncGroupSocket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncGroupSocket")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<T> AsyncGroupSocket<T> {
    pub(crate) fn new(fd: OwnedFd, group: String, max_message: usize) -> Result<Self, IpcError> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        fcntl(
            &fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because a `T` that does not own its
        // fd could close it while registered; ours is an `OwnedFd` that the
        // `AsyncFd` owns until it is dropped, the sound case. (Its
        // replacement, `register`, is `unsafe`, which this crate forbids.)
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Self {
            fd: Arc::new(fd),
            group,
            max_message,
            send_lock: Arc::default(),
            recv_state: Arc::new(tokio::sync::Mutex::new((
                Decoder::new(max_message),
                vec![0; frame::MAX_PACKET],
            ))),
            _type: PhantomData,
        })
    }

    /// The group's id.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Sends raw bytes to the other members.
    pub async fn send_bytes(&self, message: &[u8]) -> Result<(), IpcError> {
        let packets = frame::encode(message, self.max_message)?;
        let _whole = self.send_lock.lock().await;
        for packet in &packets {
            loop {
                let mut ready = self.fd.writable().await?;
                match ready.try_io(|fd| socket::send(fd, packet)) {
                    Ok(Ok(())) => break,
                    Ok(Err(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        return Err(IpcError::Closed);
                    }
                    Ok(Err(e)) => return Err(IpcError::Io(e)),
                    Err(_would_block) => continue,
                }
            }
        }
        Ok(())
    }

    /// Receives the next message's bytes. Malformed packets are logged and
    /// skipped.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>, IpcError> {
        let mut state = self.recv_state.lock().await;
        let (decoder, buffer) = &mut *state;
        loop {
            let mut ready = self.fd.readable().await?;
            let received = match ready.try_io(|fd| socket::recv(fd, buffer)) {
                Ok(received) => received,
                Err(_would_block) => continue,
            };
            match received {
                Ok(Some(len)) => {
                    let pushed = decoder.push(&buffer[..len]);
                    if let Some(error) = decoder.take_dropped() {
                        tracing::warn!(group = %self.group, %error, "incomplete IPC message dropped");
                    }
                    match pushed {
                        Ok(Some(message)) => return Ok(message),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(group = %self.group, %error, "malformed IPC frame dropped")
                        }
                    }
                }
                Ok(None) => return Err(IpcError::Closed),
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(group = %self.group, %error, "malformed IPC packet dropped");
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(IpcError::Closed)
                }
                Err(error) => return Err(IpcError::Io(error)),
            }
        }
    }
}

impl<T: Serialize> AsyncGroupSocket<T> {
    /// Sends `value` to every other member of the group.
    pub async fn send(&self, value: &T) -> Result<(), IpcError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).map_err(|e| IpcError::Encode(e.to_string()))?;
        self.send_bytes(&bytes).await
    }
}

impl<T: DeserializeOwned> AsyncGroupSocket<T> {
    /// Receives the next message.
    pub async fn recv(&self) -> Result<T, IpcError> {
        let bytes = self.recv_bytes().await?;
        ciborium::from_reader(&bytes[..]).map_err(|e| IpcError::Decode(e.to_string()))
    }
}
