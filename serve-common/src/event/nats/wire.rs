//! An event on the wire, and the checks a message from the wire passes
//! before it reaches the bus.
//!
//! `SCE1`, the sender (u64, little-endian), the sequence number (u64), the
//! name's length (u32), the name, then the payload (CBOR, as
//! [`Event::encode_payload`](crate::event::Event::encode_payload) made it).
//! In JetStream mode the message also carries `Nats-Msg-Id:
//! <sender hex>-<sequence>`, which the server de-duplicates resends by.

const MAGIC: &[u8; 4] = b"SCE1";
/// Bytes the envelope adds around the name and the payload.
pub(crate) const HEADER: usize = 4 + 8 + 8 + 4;
/// The largest sequence number taken from the wire: a sender notifying a
/// million events a second takes 285 years to reach it; beyond, a forgery.
pub(crate) const MAX_SEQ: u64 = 1 << 53;

/// An envelope's start for the event `name`, its sender and sequence
/// number left blank ([`seal`] fills them in): the payload is appended.
pub(crate) fn begin(name: &str, payload_hint: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + name.len() + payload_hint);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// Fills in the sender and the sequence number of an envelope [`begin`]
/// started.
pub(crate) fn seal(envelope: &mut [u8], origin: u64, seq: u64) {
    envelope[4..12].copy_from_slice(&origin.to_le_bytes());
    envelope[12..20].copy_from_slice(&seq.to_le_bytes());
}

/// A whole envelope, in one go.
#[cfg(test)]
pub(crate) fn encode(origin: u64, seq: u64, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = begin(name, payload.len());
    bytes.extend_from_slice(payload);
    seal(&mut bytes, origin, seq);
    bytes
}

/// The `Nats-Msg-Id` of the event `seq` of `origin`.
pub(crate) fn message_id(origin: u64, seq: u64) -> String {
    format!("{origin:016x}-{seq}")
}

#[derive(Debug)]
pub(crate) struct WireRef<'a> {
    pub(crate) origin: u64,
    pub(crate) seq: u64,
    pub(crate) name: &'a str,
    pub(crate) payload: &'a [u8],
}

/// Decodes and checks a message: the envelope is whole, the sender and
/// the sequence number are plausible, the name is the one its subject
/// says (so a consumer's filter cannot be dodged), and a `Nats-Msg-Id`
/// header, when present, matches the envelope.
pub(crate) fn decode<'a>(
    bytes: &'a [u8],
    prefix: &str,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
) -> Result<WireRef<'a>, String> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err("not an event envelope".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let name_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap_or_default()) as usize;
    let rest = &bytes[HEADER..];
    if rest.len() < name_len {
        return Err("the name runs past the end".into());
    }
    let name = std::str::from_utf8(&rest[..name_len]).map_err(|_| "the name is not UTF-8")?;
    let wire = WireRef {
        origin: u64_at(4),
        seq: u64_at(12),
        name,
        payload: &rest[name_len..],
    };
    if wire.origin == 0 {
        return Err("sender 0".into());
    }
    if wire.seq == 0 || wire.seq > MAX_SEQ {
        return Err(format!("absurd sequence number {}", wire.seq));
    }
    if !super::subjects::is_subject_of(prefix, wire.name, subject) {
        return Err(format!(
            "the event's name {:?} is not its subject's",
            wire.name.chars().take(64).collect::<String>()
        ));
    }
    if let Some(id) = headers.and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)) {
        if id.as_str() != message_id(wire.origin, wire.seq) {
            return Err("its Nats-Msg-Id is not its envelope's".into());
        }
    }
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_an_error_not_a_panic() {
        let bytes = encode(7, 9, "a.b", b"\x18\x2a");
        let wire = decode(&bytes, "p", "p.a.b", None).unwrap();
        assert_eq!(
            (wire.origin, wire.seq, wire.name, wire.payload),
            (7, 9, "a.b", &b"\x18\x2a"[..])
        );
        let decode = |bytes: &[u8]| decode(bytes, "p", "p.a.b", None).map(|_| ());
        assert!(decode(b"").is_err());
        assert!(decode(b"XXXX0123456789abcdef0123").is_err(), "bad magic");
        assert!(decode(&bytes[..HEADER + 1]).is_err(), "name cut short");
        let mut huge = bytes.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err(), "name length past the end");
        let mut bad_utf8 = encode(1, 1, "ab", b"");
        bad_utf8[HEADER] = 0xff;
        assert!(decode(&bad_utf8).is_err());
    }

    #[test]
    fn forged_numbers_names_and_ids_are_refused() {
        let check = |origin, seq, name: &str, subject: &str| {
            decode(&encode(origin, seq, name, b""), "p", subject, None).map(|_| ())
        };
        assert!(check(1, u64::MAX, "a", "p.a")
            .unwrap_err()
            .contains("absurd"));
        assert!(check(1, MAX_SEQ + 1, "a", "p.a").is_err());
        assert!(check(1, 0, "a", "p.a").is_err());
        assert!(check(0, 1, "a", "p.a").is_err());
        assert!(check(1, MAX_SEQ, "a", "p.a").is_ok());
        assert!(check(1, 1, "b", "p.a").unwrap_err().contains("subject"));
        assert!(check(1, 1, "a b", "p.a%20b").is_ok());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "0000000000000001-2");
        let bytes = encode(1, 2, "a", b"");
        assert!(decode(&bytes, "p", "p.a", Some(&headers)).is_ok());
        let bytes = encode(1, 3, "a", b"");
        assert!(decode(&bytes, "p", "p.a", Some(&headers)).is_err());
    }
}
