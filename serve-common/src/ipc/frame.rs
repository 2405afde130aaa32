//! The wire format: a message is split into SEQPACKET packets, because one
//! packet is capped by the socket's send buffer (212,992 bytes by default).
//!
//! Every packet starts with a tag byte:
//!
//! | tag | packet | meaning |
//! |---|---|---|
//! | `0x01` | `[0x01][bytes]` | a whole message |
//! | `0x02` | `[0x02][u32 LE total length][bytes]` | the first part of a longer message |
//! | `0x03` | `[0x03][bytes]` | the next part |
//!
//! The decoder checks every length against the total and the maximum
//! message size; a malformed packet is an error for that packet only (the
//! partial message it belongs to is dropped) and decoding goes on. A new
//! message that starts before the last one was complete is decoded; the
//! incomplete one is dropped and reported by [`Decoder::take_dropped`].

/// Payload bytes per packet: well under the default send buffer.
pub const CHUNK: usize = 64 * 1024;
/// The largest packet [`encode`] produces.
pub const MAX_PACKET: usize = CHUNK + 5;

pub(crate) const WHOLE: u8 = 0x01;
pub(crate) const FIRST: u8 = 0x02;
const MORE: u8 = 0x03;

/// A message longer than the maximum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {len} bytes exceeds the maximum of {max} bytes")]
pub struct TooLarge {
    /// The message's length.
    pub len: usize,
    /// The maximum.
    pub max: usize,
}

/// Splits `message` into packets.
pub fn encode(message: &[u8], max: usize) -> Result<Vec<Vec<u8>>, TooLarge> {
    if message.len() > max || message.len() > u32::MAX as usize {
        return Err(TooLarge {
            len: message.len(),
            max: max.min(u32::MAX as usize),
        });
    }
    if message.len() <= CHUNK {
        let mut packet = Vec::with_capacity(1 + message.len());
        packet.push(WHOLE);
        packet.extend_from_slice(message);
        return Ok(vec![packet]);
    }
    let mut packets = Vec::with_capacity(message.len() / CHUNK + 1);
    for (i, chunk) in message.chunks(CHUNK).enumerate() {
        let mut packet = Vec::with_capacity(5 + chunk.len());
        if i == 0 {
            packet.push(FIRST);
            packet.extend_from_slice(&(message.len() as u32).to_le_bytes());
        } else {
            packet.push(MORE);
        }
        packet.extend_from_slice(chunk);
        packets.push(packet);
    }
    Ok(packets)
}

/// A packet that does not fit the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A zero-length packet.
    #[error("empty packet")]
    Empty,
    /// An unknown tag byte.
    #[error("unknown packet tag {0:#04x}")]
    BadTag(u8),
    /// A first part without its 4-byte length.
    #[error("truncated header")]
    Truncated,
    /// A message announced or grown beyond the maximum.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A part that does not follow a first part.
    #[error("continuation without a first part")]
    Orphan,
    /// A part that does not match the announced length.
    #[error("parts add up to more than the announced {announced} bytes")]
    Overrun {
        /// The announced total.
        announced: usize,
    },
    /// A new message started before the last one was complete (the new
    /// one is kept; see [`Decoder::take_dropped`]).
    #[error(
        "a new message started before the previous one ({got} of {announced} bytes) was complete"
    )]
    Interrupted {
        /// Bytes received of the dropped message.
        got: usize,
        /// Its announced total.
        announced: usize,
    },
}

/// What a packet that passed [`FrameCheck::check`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A whole message: the payload is `packet[1..]`.
    Whole,
    /// The first part of a longer message: the payload is `packet[5..]`.
    /// `complete` when it carries the whole announced length.
    First {
        /// Whether this packet completes the message.
        complete: bool,
    },
    /// A next part: the payload is `packet[1..]`.
    More {
        /// Whether this packet completes the message.
        complete: bool,
    },
}

/// Checks a connection's packets against the format without copying
/// them: the server uses it to forward packets as they came, and
/// [`Decoder`] to reassemble them. On error the packet, and the partial
/// message it belonged to, are dropped; the next packet starts afresh.
#[derive(Debug)]
pub struct FrameCheck {
    max: usize,
    /// The message in progress: (announced, received so far).
    partial: Option<(usize, usize)>,
    dropped: Option<FrameError>,
}

impl FrameCheck {
    /// A checker that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: None,
            dropped: None,
        }
    }

    /// Checks one packet.
    pub fn check(&mut self, packet: &[u8]) -> Result<PacketKind, FrameError> {
        let Some((&tag, rest)) = packet.split_first() else {
            return Err(FrameError::Empty);
        };
        match tag {
            WHOLE => {
                self.interrupt();
                if rest.len() > self.max {
                    return Err(TooLarge {
                        len: rest.len(),
                        max: self.max,
                    }
                    .into());
                }
                Ok(PacketKind::Whole)
            }
            FIRST => {
                self.interrupt();
                let (len, data) = rest.split_first_chunk::<4>().ok_or(FrameError::Truncated)?;
                let announced = u32::from_le_bytes(*len) as usize;
                if announced > self.max {
                    return Err(TooLarge {
                        len: announced,
                        max: self.max,
                    }
                    .into());
                }
                if data.len() > announced {
                    return Err(FrameError::Overrun { announced });
                }
                let complete = data.len() == announced;
                if !complete {
                    self.partial = Some((announced, data.len()));
                }
                Ok(PacketKind::First { complete })
            }
            MORE => {
                let (announced, got) = self.partial.take().ok_or(FrameError::Orphan)?;
                let got = got + rest.len();
                if got > announced {
                    return Err(FrameError::Overrun { announced });
                }
                let complete = got == announced;
                if !complete {
                    self.partial = Some((announced, got));
                }
                Ok(PacketKind::More { complete })
            }
            other => {
                self.partial = None;
                Err(FrameError::BadTag(other))
            }
        }
    }

    /// Forgets the message in progress (after a packet that could not be
    /// read at all).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// A message that starts interrupts an incomplete one: that one is
    /// dropped and reported by [`take_dropped`](Self::take_dropped).
    fn interrupt(&mut self) {
        if let Some((announced, got)) = self.partial.take() {
            self.dropped = Some(FrameError::Interrupted { got, announced });
        }
    }

    /// The incomplete message the last packet interrupted, if any: a
    /// sender that gave up half-way. Check after each
    /// [`check`](Self::check) to log it.
    pub fn take_dropped(&mut self) -> Option<FrameError> {
        self.dropped.take()
    }

    /// Whether a message is half-received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }
}

/// Reassembles messages from packets, one connection's worth. The buffer
/// grows with the bytes that arrive, not with the length a first packet
/// announces, so a peer cannot make it reserve memory it never sends.
#[derive(Debug)]
pub struct Decoder {
    check: FrameCheck,
    buffer: Vec<u8>,
}

impl Decoder {
    /// A decoder that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            check: FrameCheck::new(max),
            buffer: Vec::new(),
        }
    }

    /// Takes one packet. Returns a message when this packet completes one.
    /// On error the packet, and the partial message it belonged to, are
    /// dropped; the next packet starts afresh.
    pub fn push(&mut self, packet: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let kind = match self.check.check(packet) {
            Ok(kind) => kind,
            Err(error) => {
                self.buffer = Vec::new();
                return Err(error);
            }
        };
        match kind {
            PacketKind::Whole => {
                self.buffer = Vec::new();
                Ok(Some(packet[1..].to_vec()))
            }
            PacketKind::First { complete } => {
                self.buffer = packet[5..].to_vec();
                Ok(complete.then(|| std::mem::take(&mut self.buffer)))
            }
            PacketKind::More { complete } => {
                self.buffer.extend_from_slice(&packet[1..]);
                Ok(complete.then(|| std::mem::take(&mut self.buffer)))
            }
        }
    }

    /// The incomplete message the last packet interrupted, if any: a
    /// sender that gave up half-way. Check after each [`push`](Self::push)
    /// to log it.
    pub fn take_dropped(&mut self) -> Option<FrameError> {
        self.check.take_dropped()
    }

    /// Whether a message is half-received.
    pub fn in_progress(&self) -> bool {
        self.check.in_progress()
    }

    /// Drops the message in progress (after a packet that could not be
    /// read at all).
    pub fn reset(&mut self) {
        self.check.reset();
        self.buffer = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_small_and_large_messages() {
        for len in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let packets = encode(&message, 1 << 24).unwrap();
            assert!(packets.iter().all(|p| p.len() <= MAX_PACKET));
            let mut decoder = Decoder::new(1 << 24);
            let mut out = None;
            for packet in &packets {
                out = decoder.push(packet).unwrap();
            }
            assert_eq!(out.unwrap(), message);
        }
    }

    #[test]
    fn malformed_packets_are_errors_and_decoding_recovers() {
        let mut decoder = Decoder::new(100);
        assert_eq!(decoder.push(&[]), Err(FrameError::Empty));
        assert_eq!(decoder.push(&[0x09, 1]), Err(FrameError::BadTag(9)));
        assert_eq!(decoder.push(&[MORE, 1]), Err(FrameError::Orphan));
        assert_eq!(decoder.push(&[FIRST, 1]), Err(FrameError::Truncated));
        assert!(matches!(
            decoder.push(&[FIRST, 200, 0, 0, 0]),
            Err(FrameError::TooLarge(_))
        ));
        assert_eq!(decoder.push(&[FIRST, 4, 0, 0, 0, 1, 2]), Ok(None));
        assert_eq!(
            decoder.push(&[WHOLE, 7]),
            Ok(Some(vec![7])),
            "the new message is kept"
        );
        assert!(matches!(
            decoder.take_dropped(),
            Some(FrameError::Interrupted {
                got: 2,
                announced: 4
            })
        ));
        assert_eq!(decoder.take_dropped(), None);
        assert_eq!(encode(&[0; 101], 100).unwrap_err().len, 101);
    }

    #[test]
    fn an_announced_length_reserves_nothing_until_bytes_arrive() {
        let mut decoder = Decoder::new(16 << 20);
        assert_eq!(decoder.push(&[FIRST, 0, 0, 0, 1, 7]), Ok(None));
        assert!(
            decoder.buffer.capacity() < 1024,
            "{}",
            decoder.buffer.capacity()
        );
        assert!(decoder.in_progress());
    }

    #[test]
    fn the_checker_classifies_without_copying() {
        let mut check = FrameCheck::new(100);
        assert_eq!(check.check(&[WHOLE, 1]), Ok(PacketKind::Whole));
        assert_eq!(
            check.check(&[FIRST, 3, 0, 0, 0, 1]),
            Ok(PacketKind::First { complete: false })
        );
        assert_eq!(
            check.check(&[MORE, 2]),
            Ok(PacketKind::More { complete: false })
        );
        assert_eq!(
            check.check(&[MORE, 3]),
            Ok(PacketKind::More { complete: true })
        );
        assert_eq!(check.check(&[MORE, 4]), Err(FrameError::Orphan));
        assert_eq!(
            check.check(&[FIRST, 2, 0, 0, 0, 1, 2]),
            Ok(PacketKind::First { complete: true })
        );
    }
}
