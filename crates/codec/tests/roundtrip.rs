//! Property tests of the codec as a whole: every packet type in every protocol
//! version survives encode then decode unchanged; decoding is incremental;
//! size limits hold on both sides; and no input, random or a damaged valid
//! packet, makes the decoder panic or answer with a non-error reason code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use rookery_codec::{
    DecodeError, EncodeError, MAX_PACKET_SIZE, Packet, PacketType, ProtocolVersion, Publish,
    PublishProperties, QoS, decode,
};

use common::{VERSIONS, versioned_packet};

/// 256 cases per round-trip property, 512 for the never-panic ones, so the
/// file runs in a second or two in debug; `PROPTEST_CASES=100000` runs deeper.
fn config() -> Config {
    with_cases(256)
}

fn robustness_config() -> Config {
    with_cases(512)
}

fn with_cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    Config {
        cases: cases.unwrap_or(default),
        ..Config::default()
    }
}

/// Pairs each version with a packet of one kind valid for it.
fn each_version(
    kind: fn(ProtocolVersion) -> BoxedStrategy<Packet>,
) -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    common::version().prop_flat_map(move |version| (Just(version), kind(version)))
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    let size = packet
        .encode(version, &mut buf)
        .expect("a valid packet encodes");
    assert_eq!(size, buf.len());
    buf
}

/// Encodes after bytes already in the buffer, checks the size `encode` reports,
/// decodes with a limit of exactly that size, and checks the decoder took the
/// whole packet and gave back the same one.
fn assert_round_trip(version: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(&b"earlier"[..]);
    let size = packet.encode(version, &mut buf);
    prop_assert!(size.is_ok(), "{packet:?} does not encode: {size:?}");
    let size = size.unwrap();
    prop_assert_eq!(
        size,
        buf.len() - b"earlier".len(),
        "encode reported the wrong size"
    );
    let mut wire = buf.split_off(b"earlier".len());
    prop_assert_eq!(&buf[..], b"earlier", "encode touched bytes before its own");
    let limit = u32::try_from(size).unwrap();
    let decoded = decode(&mut wire, version, limit);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(
        wire.is_empty(),
        "{} bytes left after the packet",
        wire.len()
    );
    if let Packet::Connect(_) = packet {
        // A CONNECT is decoded by its own protocol level, whatever the connection's.
        for other in VERSIONS {
            let mut wire = encode(packet, version);
            prop_assert_eq!(decode(&mut wire, other, limit), Ok(Some(packet.clone())));
        }
    }
    Ok(())
}

/// The length of the fixed header at the start of an encoded packet.
fn fixed_header_len(wire: &[u8]) -> usize {
    1 + wire[1..].iter().position(|byte| byte & 0x80 == 0).unwrap() + 1
}

/// Decodes everything in `bytes` under `version`, checking every refusal is an
/// error reason code and every accepted packet encodes and decodes to itself.
fn decode_arbitrary(bytes: &[u8], version: ProtocolVersion, max: u32) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        match decode(&mut buf, version, max) {
            Ok(Some(packet)) => assert_reencodes(&packet, version)?,
            Ok(None) => return Ok(()),
            Err(error) => {
                let code = error.reason_code();
                prop_assert!(
                    code.is_error() && code.as_u8() >= 0x80,
                    "{error:?} maps to {code:?}"
                );
                return Ok(());
            }
        }
    }
}

/// Anything the decoder accepts it must be able to send back (the fuzz target's
/// invariant, here on every build).
fn assert_reencodes(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let version = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    let size = packet.encode(version, &mut out);
    prop_assert_eq!(
        size,
        Ok(out.len()),
        "accepted {:?} but cannot encode it",
        packet
    );
    prop_assert_eq!(
        decode(&mut out, version, u32::MAX),
        Ok(Some(packet.clone()))
    );
    prop_assert!(out.is_empty());
    Ok(())
}

/// A way to damage an encoded packet.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Overwrite(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite(at, byte)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Insert(at, byte) => bytes.insert(at.index(len + 1), *byte),
        _ if len == 0 => {}
        Mutation::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Overwrite(at, byte) => bytes[at.index(len)] = *byte,
        Mutation::Remove(at) => {
            bytes.remove(at.index(len));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
    }
}

/// Frames `body` behind `first` and a correct remaining length.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    let mut rest = body.len();
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if rest == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

macro_rules! round_trip_tests {
    ($($(#[$doc:meta])* $name:ident => $strategy:expr;)*) => {
        proptest! {
            #![proptest_config(config())]
            $(
                $(#[$doc])*
                #[test]
                fn $name((version, packet) in $strategy) {
                    assert_round_trip(version, &packet)?;
                }
            )*
        }
    };
}

round_trip_tests! {
    connect_round_trips => each_version(common::connect);
    connack_round_trips => each_version(common::connack);
    publish_round_trips => each_version(common::publish);
    puback_round_trips => each_version(|version| common::ack(version, PacketType::PubAck));
    pubrec_round_trips => each_version(|version| common::ack(version, PacketType::PubRec));
    pubrel_round_trips => each_version(|version| common::ack(version, PacketType::PubRel));
    pubcomp_round_trips => each_version(|version| common::ack(version, PacketType::PubComp));
    subscribe_round_trips => each_version(common::subscribe);
    suback_round_trips => each_version(common::suback);
    unsubscribe_round_trips => each_version(common::unsubscribe);
    unsuback_round_trips => each_version(common::unsuback);
    pingreq_round_trips => each_version(common::pingreq);
    pingresp_round_trips => each_version(common::pingresp);
    disconnect_round_trips => each_version(common::disconnect);
    /// AUTH exists only in 5.0.
    auth_round_trips => common::auth().prop_map(|packet| (ProtocolVersion::V5, packet));
}

proptest! {
    #![proptest_config(config())]

    /// The bytes of several packets, arriving in chunks split anywhere, decode
    /// to the same packets in order: `Ok(None)` while a packet is incomplete,
    /// each packet as soon as its last byte arrives.
    #[test]
    fn packets_split_anywhere_decode_in_order(
        (version, packets) in common::version()
            .prop_flat_map(|version| (Just(version), vec(common::packet(version), 1..6))),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for packet in &packets {
            packet.encode(version, &mut wire).unwrap();
            ends.push(wire.len());
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            loop {
                match decode(&mut buf, version, MAX_PACKET_SIZE) {
                    Ok(Some(packet)) => decoded.push(packet),
                    Ok(None) => break,
                    Err(error) => prop_assert!(false, "{error:?} after {fed} bytes"),
                }
            }
            let complete = ends.iter().filter(|end| **end <= fed).count();
            prop_assert_eq!(decoded.len(), complete, "after {} of {} bytes", fed, wire.len());
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(buf.is_empty());
    }

    /// MQTT-3.1.2-24, MQTT-3.2.2-15: a packet larger than the peer's Maximum
    /// Packet Size is not sent; `encode_within` refuses it and writes nothing.
    #[test]
    fn encode_within_refuses_a_limit_below_the_size(
        (version, packet) in versioned_packet(),
        below in any::<Index>(),
    ) {
        let size = encode(&packet, version).len();
        let max = u32::try_from(below.index(size)).unwrap();
        let mut buf = BytesMut::from(&b"kept"[..]);
        prop_assert_eq!(
            packet.encode_within(version, max, &mut buf),
            Err(EncodeError::PacketTooLarge { size, max })
        );
        prop_assert_eq!(&buf[..], b"kept");
        let exact = u32::try_from(size).unwrap();
        prop_assert_eq!(packet.encode_within(version, exact, &mut buf), Ok(size));
        prop_assert_eq!(buf.len(), 4 + size);
    }

    /// A receiver refuses a packet larger than its Maximum Packet Size as soon
    /// as the fixed header is in, before buffering the body.
    #[test]
    fn decode_refuses_an_oversized_packet_from_its_fixed_header(
        (version, packet) in versioned_packet(),
        below in any::<Index>(),
    ) {
        let wire = encode(&packet, version);
        let size = wire.len();
        let max = u32::try_from(below.index(size)).unwrap();
        let header = fixed_header_len(&wire);
        let mut partial = BytesMut::from(&wire[..header - 1]);
        prop_assert_eq!(decode(&mut partial, version, max), Ok(None));
        let mut partial = BytesMut::from(&wire[..header]);
        prop_assert_eq!(
            decode(&mut partial, version, max),
            Err(DecodeError::PacketTooLarge { size, max })
        );
        let mut whole = wire.clone();
        let exact = u32::try_from(size).unwrap();
        prop_assert_eq!(decode(&mut whole, version, exact), Ok(Some(packet)));
    }
}

proptest! {
    #![proptest_config(robustness_config())]

    /// No byte string makes the decoder panic, under any version or limit, and
    /// every refusal carries an error reason code (0x80 or above).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        max in prop_oneof![Just(u32::MAX), 0..600u32],
    ) {
        for version in VERSIONS {
            decode_arbitrary(&bytes, version, max)?;
        }
    }

    /// Arbitrary bodies behind a well-formed fixed header reach every body parser.
    #[test]
    fn arbitrary_bodies_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..256),
    ) {
        let bytes = frame(first, &body);
        for version in VERSIONS {
            decode_arbitrary(&bytes, version, MAX_PACKET_SIZE)?;
        }
    }

    /// Valid packets with bits flipped, bytes overwritten, inserted or removed,
    /// or cut short never make the decoder panic, whether the remaining length
    /// is left as it was or recomputed to frame the damaged body.
    #[test]
    fn damaged_packets_never_panic(
        (version, packet) in versioned_packet(),
        mutations in vec(mutation(), 1..4),
        reframe in any::<bool>(),
    ) {
        let wire = encode(&packet, version);
        let bytes = if reframe {
            let header = fixed_header_len(&wire);
            let mut body = wire[header..].to_vec();
            for mutation in &mutations {
                apply(&mut body, mutation);
            }
            frame(wire[0], &body)
        } else {
            let mut bytes = wire.to_vec();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            bytes
        };
        for version in VERSIONS {
            decode_arbitrary(&bytes, version, MAX_PACKET_SIZE)?;
        }
    }
}

/// The brief's case (c) at full size: a 100,000-byte PUBLISH is refused from
/// its first five bytes under a 64 KiB limit, in every version.
#[test]
fn large_publish_is_refused_from_its_first_five_bytes() {
    for version in VERSIONS {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "big/payload".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: vec![0x5A; 100_000].into(),
        });
        let wire = encode(&packet, version);
        let mut first_five = BytesMut::from(&wire[..5]);
        let error = decode(&mut first_five, version, 65_536).unwrap_err();
        assert_eq!(
            error,
            DecodeError::PacketTooLarge {
                size: wire.len(),
                max: 65_536
            }
        );
        assert_eq!(error.reason_code().as_u8(), 0x95);
        // Under a limit it fits, the same five bytes only wait for more.
        let mut first_five = BytesMut::from(&wire[..5]);
        assert_eq!(decode(&mut first_five, version, MAX_PACKET_SIZE), Ok(None));
        let mut whole = wire.clone();
        assert_eq!(
            decode(&mut whole, version, MAX_PACKET_SIZE),
            Ok(Some(packet))
        );
    }
}
