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

const WHOLE: u8 = 0x01;
const FIRST: u8 = 0x02;
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

/// Reassembles messages from packets, one connection's worth.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    partial: Option<(usize, Vec<u8>)>,
    dropped: Option<FrameError>,
}

impl Decoder {
    /// A decoder that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: None,
            dropped: None,
        }
    }

    /// Takes one packet. Returns a message when this packet completes one.
    /// On error the packet, and the partial message it belonged to, are
    /// dropped; the next packet starts afresh.
    pub fn push(&mut self, packet: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (&tag, rest) = packet.split_first().ok_or(FrameError::Empty)?;
        match tag {
            WHOLE => {
                self.drop_partial();
                if rest.len() > self.max {
                    return Err(TooLarge {
                        len: rest.len(),
                        max: self.max,
                    }
                    .into());
                }
                Ok(Some(rest.to_vec()))
            }
            FIRST => {
                self.drop_partial();
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
                let mut buffer = Vec::with_capacity(announced);
                buffer.extend_from_slice(data);
                self.finish_or_keep(announced, buffer)
            }
            MORE => {
                let (announced, mut buffer) = self.partial.take().ok_or(FrameError::Orphan)?;
                if buffer.len() + rest.len() > announced {
                    return Err(FrameError::Overrun { announced });
                }
                buffer.extend_from_slice(rest);
                self.finish_or_keep(announced, buffer)
            }
            other => {
                self.partial = None;
                Err(FrameError::BadTag(other))
            }
        }
    }

    /// A message that starts interrupts an incomplete one: that one is
    /// dropped (and reported by [`take_dropped`](Self::take_dropped)), the
    /// new one decoded.
    fn drop_partial(&mut self) {
        if let Some((announced, buffer)) = self.partial.take() {
            self.dropped = Some(FrameError::Interrupted {
                got: buffer.len(),
                announced,
            });
        }
    }

    /// The incomplete message the last packet interrupted, if any: a
    /// sender that gave up half-way. Check after each [`push`](Self::push)
    /// to log it.
    pub fn take_dropped(&mut self) -> Option<FrameError> {
        self.dropped.take()
    }

    fn finish_or_keep(
        &mut self,
        announced: usize,
        buffer: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        if buffer.len() == announced {
            Ok(Some(buffer))
        } else {
            self.partial = Some((announced, buffer));
            Ok(None)
        }
    }

    /// Whether a message is half-received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
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
}
