//! The frame codec under arbitrary input (proptest).
#![forbid(unsafe_code)]

use proptest::prelude::*;
use serve_common::ipc::frame::{CHUNK, Decoder, MAX_PACKET, encode};

const MAX: usize = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_message_round_trips(len in 0..(3 * CHUNK + 10), seed in any::<u64>()) {
        // Framing depends on the length; cheap content from a seed keeps
        // 2,000 multi-packet cases fast in a debug build.
        let message: Vec<u8> = (0..len as u64).map(|i| (i.wrapping_mul(seed | 1) >> 7) as u8).collect();
        let packets = encode(&message, MAX).unwrap();
        prop_assert!(packets.iter().all(|p| p.len() <= MAX_PACKET));
        let mut decoder = Decoder::new(MAX);
        let mut decoded = None;
        for (i, packet) in packets.iter().enumerate() {
            let out = decoder.push(packet).unwrap();
            prop_assert_eq!(out.is_some(), i == packets.len() - 1);
            decoded = out;
        }
        prop_assert_eq!(decoded.unwrap(), message);
    }

    #[test]
    fn arbitrary_packets_never_panic_and_decoding_recovers(
        packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let mut decoder = Decoder::new(1024);
        for packet in &packets {
            if let Ok(Some(message)) = decoder.push(packet) {
                prop_assert!(message.len() <= 1024);
            }
        }
        // Whatever came before, the next whole message decodes.
        let valid = encode(b"ok", 1024).unwrap();
        prop_assert_eq!(decoder.push(&valid[0]).unwrap().unwrap(), b"ok".to_vec());
    }
}
