//! Feeds arbitrary bytes to the decoder under every protocol version, as one
//! buffer and split in two, and re-encodes whatever decodes. The decoder must
//! never panic; anything it accepts must encode, and decode again to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rookery_codec::{Packet, ProtocolVersion, decode};

const MAX_PACKET_SIZE: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let whole = decode_all(data, version);
        // The same bytes arriving in two reads decode to the same packets.
        let split = data.len() / 2;
        let mut buf = BytesMut::from(&data[..split]);
        let mut packets = Vec::new();
        let first = drain(&mut buf, version, &mut packets);
        let outcome = if first.is_ok() {
            buf.extend_from_slice(&data[split..]);
            drain(&mut buf, version, &mut packets)
        } else {
            first
        };
        assert_eq!(whole.0, packets);
        assert_eq!(whole.1.is_ok(), outcome.is_ok());
        for packet in &whole.0 {
            check_reencodes(packet, version);
        }
    }
});

type Decoded = (Vec<Packet>, Result<(), rookery_codec::DecodeError>);

fn decode_all(data: &[u8], version: ProtocolVersion) -> Decoded {
    let mut buf = BytesMut::from(data);
    let mut packets = Vec::new();
    let outcome = drain(&mut buf, version, &mut packets);
    (packets, outcome)
}

fn drain(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    packets: &mut Vec<Packet>,
) -> Result<(), rookery_codec::DecodeError> {
    while let Some(packet) = decode(buf, version, MAX_PACKET_SIZE)? {
        packets.push(packet);
    }
    Ok(())
}

fn check_reencodes(packet: &Packet, version: ProtocolVersion) {
    // A CONNECT speaks its own version; every other packet the connection's.
    let version = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    let size = packet.encode(version, &mut out).expect("a decoded packet encodes");
    assert_eq!(size, out.len());
    let again = decode(&mut out, version, u32::MAX).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(out.is_empty());
}
