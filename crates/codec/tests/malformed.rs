//! Hand-written malformed packets, one rule of the spec each, with the error
//! and reason code the decoder must answer. Every refusal is also fed one byte
//! at a time (the same verdict, never a packet) and under every other version
//! (never a panic), and where the fault is easy to fix the fixed bytes must
//! decode, so no test passes because its bytes were broken some other way.
//!
//! Normative statements are cited by their 5.0 numbers unless a test says 3.1.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::BytesMut;
use rookery_codec::{
    DecodeError, MAX_PACKET_SIZE, Packet, PacketType, PayloadFormat, PropertyId, ProtocolVersion,
    QoS, ReasonCode, RetainHandling, decode,
};
use rookery_topic::TopicError;

use ProtocolVersion::{V3_1, V3_1_1, V5};

const VERSIONS: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

/// Builds a packet body field by field, so lengths are always right and each
/// test breaks only the rule it names.
#[derive(Debug, Clone, Default)]
struct Body(Vec<u8>);

impl Body {
    fn new() -> Self {
        Self::default()
    }

    fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// A UTF-8 string or binary field: a two-byte length, then the bytes as given.
    fn string(self, bytes: &[u8]) -> Self {
        let len = u16::try_from(bytes.len()).unwrap();
        self.u16(len).raw(bytes)
    }

    fn varint(mut self, value: u32) -> Self {
        put_varint(&mut self.0, value);
        self
    }

    /// A property list: its length as a variable byte integer, then the properties.
    fn properties(self, properties: Body) -> Self {
        let len = u32::try_from(properties.0.len()).unwrap();
        self.varint(len).raw(&properties.0)
    }

    /// The whole packet: `first` byte, the right remaining length, the body.
    fn frame(&self, first: u8) -> Vec<u8> {
        let mut packet = vec![first];
        put_varint(&mut packet, u32::try_from(self.0.len()).unwrap());
        packet.extend_from_slice(&self.0);
        packet
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A CONNECT's variable header up to its properties: protocol name and level
/// for `version`, `flags`, keep alive 60, and in 5.0 `properties`.
fn connect_header(version: ProtocolVersion, flags: u8, properties: Body) -> Body {
    let body = Body::new()
        .string(version.protocol_name().as_bytes())
        .u8(version.level())
        .u8(flags);
    let body = body.u16(60);
    if version.is_v5() {
        body.properties(properties)
    } else {
        body
    }
}

/// A minimal CONNECT: clean start, client id `c`.
fn connect(version: ProtocolVersion, properties: Body) -> Vec<u8> {
    connect_header(version, 0x02, properties)
        .string(b"c")
        .frame(0x10)
}

/// A QoS 0 PUBLISH to `topic` with 5.0 `properties` and payload `hi`.
fn publish(version: ProtocolVersion, topic: &[u8], properties: Body) -> Vec<u8> {
    let body = Body::new().string(topic);
    let body = if version.is_v5() {
        body.properties(properties)
    } else {
        body
    };
    body.raw(b"hi").frame(0x30)
}

/// A SUBSCRIBE, packet id 1, one filter `a/b` with `options`, 5.0 `properties`.
fn subscribe(version: ProtocolVersion, options: u8, properties: Body) -> Vec<u8> {
    let body = Body::new().u16(1);
    let body = if version.is_v5() {
        body.properties(properties)
    } else {
        body
    };
    body.string(b"a/b").u8(options).frame(0x82)
}

/// Expects `bytes` to be refused under `version`, fed whole and then one byte
/// at a time (which must reach the same error and decode nothing before it),
/// and never to panic under any version. Returns the error.
#[track_caller]
fn refused_within(version: ProtocolVersion, bytes: &[u8], max: u32) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let error = match decode(&mut buf, version, max) {
        Err(error) => error,
        other => panic!("{version:?} {bytes:02x?}: expected a refusal, got {other:?}"),
    };
    let mut buf = BytesMut::new();
    let mut verdict = None;
    for byte in bytes {
        buf.extend_from_slice(&[*byte]);
        match decode(&mut buf, version, max) {
            Ok(None) => {}
            Ok(Some(packet)) => {
                panic!("{version:?} {bytes:02x?}: fed bytewise, decoded {packet:?}")
            }
            Err(error) => {
                verdict = Some(error);
                break;
            }
        }
    }
    assert_eq!(
        verdict.as_ref(),
        Some(&error),
        "{version:?} {bytes:02x?}: fed bytewise"
    );
    for other in VERSIONS {
        let mut buf = BytesMut::from(bytes);
        if let Err(error) = decode(&mut buf, other, max) {
            assert!(
                error.reason_code().is_error(),
                "{error:?} has a success reason code"
            );
        }
    }
    error
}

#[track_caller]
fn refused(version: ProtocolVersion, bytes: &[u8]) -> DecodeError {
    refused_within(version, bytes, MAX_PACKET_SIZE)
}

/// Expects `bytes` to decode under `version` to one packet that takes them all.
#[track_caller]
fn accepted(version: ProtocolVersion, bytes: &[u8]) -> Packet {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, MAX_PACKET_SIZE) {
        Ok(Some(packet)) => {
            assert!(
                buf.is_empty(),
                "{version:?} {bytes:02x?}: {} bytes left",
                buf.len()
            );
            packet
        }
        other => panic!("{version:?} {bytes:02x?}: expected a packet, got {other:?}"),
    }
}

/// `assert_refused!(version, bytes, pattern [if guard], reason code)`: the
/// bytes are refused with an error matching the pattern and that reason code.
macro_rules! assert_refused {
    ($version:expr, $bytes:expr, $pattern:pat $(if $guard:expr)?, $reason:expr $(,)?) => {{
        let bytes: &[u8] = &$bytes;
        let error = refused($version, bytes);
        assert!(
            matches!(error, $pattern $(if $guard)?),
            "{:?} {bytes:02x?}: expected {}, got {error:?}",
            $version,
            stringify!($pattern),
        );
        assert_eq!(error.reason_code(), $reason, "{:?} {bytes:02x?}: {error:?}", $version);
    }};
}

const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
const PROTOCOL_ERROR: ReasonCode = ReasonCode::ProtocolError;

// ---------------------------------------------------------------------------
// Fixed header (section 2.1) and variable byte integers (section 1.5.5)
// ---------------------------------------------------------------------------

/// MQTT-1.5.5-1: a variable byte integer has at most four bytes; a fourth byte
/// with its continuation bit set is Malformed as soon as it arrives.
#[test]
fn mqtt_1_5_5_1_remaining_length_with_a_fifth_byte_is_malformed() {
    for version in VERSIONS {
        assert_refused!(
            version,
            [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            DecodeError::MalformedVariableInteger,
            MALFORMED
        );
        // Four continuation bytes are enough to know.
        assert_refused!(
            version,
            [0x30, 0x80, 0x80, 0x80, 0x80],
            DecodeError::MalformedVariableInteger,
            MALFORMED
        );
        // Near miss: the largest four-byte length only waits for its body.
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert_eq!(decode(&mut buf, version, MAX_PACKET_SIZE), Ok(None));
    }
}

/// MQTT-1.5.5-1: "The encoded value MUST use the minimum number of bytes
/// necessary to represent the value". `80 00` is 0 in two bytes.
#[test]
fn mqtt_1_5_5_1_remaining_length_not_in_its_shortest_form_is_malformed() {
    for version in VERSIONS {
        assert_refused!(
            version,
            [0xC0, 0x80, 0x00],
            DecodeError::MalformedVariableInteger,
            MALFORMED
        );
        // A PUBLISH whose one-byte length is written in three bytes.
        let shortest = publish(version, b"t", Body::new());
        let mut padded = vec![shortest[0], shortest[1] | 0x80, 0x80, 0x00];
        padded.extend_from_slice(&shortest[2..]);
        assert_refused!(
            version,
            padded,
            DecodeError::MalformedVariableInteger,
            MALFORMED
        );
        // Near misses: the same packets with their lengths in one byte.
        assert_eq!(accepted(version, &[0xC0, 0x00]), Packet::PingReq);
        accepted(version, &shortest);
    }
}

/// MQTT-1.5.5-1 applies to every variable byte integer, e.g. a Subscription
/// Identifier of 1 written as `81 00`.
#[test]
fn mqtt_1_5_5_1_subscription_identifier_not_in_its_shortest_form_is_malformed() {
    let props = Body::new().u8(0x0B).raw(&[0x81, 0x00]);
    assert_refused!(
        V5,
        subscribe(V5, 0, props),
        DecodeError::MalformedVariableInteger,
        MALFORMED
    );
    let props = Body::new().u8(0x0B).raw(&[0x81, 0x01]);
    let Packet::Subscribe(request) = accepted(V5, &subscribe(V5, 0, props)) else {
        panic!()
    };
    assert_eq!(
        request
            .properties
            .subscription_identifier
            .map(|id| id.get()),
        Some(129)
    );
}

/// Section 2.1.2: packet type 0 is reserved.
#[test]
fn packet_type_0_is_reserved() {
    for version in VERSIONS {
        assert_refused!(
            version,
            [0x00, 0x00],
            DecodeError::ReservedPacketType(0),
            MALFORMED
        );
    }
}

/// Section 2.1.2 of 3.1.1: packet type 15 is reserved; 5.0 made it AUTH.
#[test]
fn auth_is_a_reserved_packet_type_before_5_0() {
    for version in [V3_1, V3_1_1] {
        assert_refused!(
            version,
            [0xF0, 0x00],
            DecodeError::ReservedPacketType(15),
            MALFORMED
        );
    }
    assert!(matches!(accepted(V5, &[0xF0, 0x00]), Packet::Auth(_)));
}

/// MQTT-2.1.3-1: the flags of every packet but PUBLISH are fixed; anything
/// else is Malformed, refused from the first byte and the remaining length.
#[test]
fn mqtt_2_1_3_1_wrong_fixed_header_flags_are_malformed() {
    let id = Body::new().u16(1);
    let subscribe_311 = Body::new().u16(1).string(b"a/b").u8(1);
    let unsubscribe_311 = Body::new().u16(1).string(b"a/b");
    let connect_311 = connect_header(V3_1_1, 0x02, Body::new()).string(b"c");
    let cases: [(PacketType, &Body, u8, u8); 10] = [
        (PacketType::PubRel, &id, 0x60, 0x62),
        (PacketType::PubRel, &id, 0x63, 0x62),
        (PacketType::Subscribe, &subscribe_311, 0x80, 0x82),
        (PacketType::Subscribe, &subscribe_311, 0x8A, 0x82),
        (PacketType::Unsubscribe, &unsubscribe_311, 0xA0, 0xA2),
        (PacketType::PingReq, &Body::new(), 0xC1, 0xC0),
        (PacketType::PingReq, &Body::new(), 0xC8, 0xC0),
        (PacketType::Connect, &connect_311, 0x12, 0x10),
        (PacketType::PubAck, &id, 0x42, 0x40),
        (PacketType::Disconnect, &Body::new(), 0xE2, 0xE0),
    ];
    for (packet_type, body, wrong, right) in cases {
        let bytes = body.frame(wrong);
        let flags = wrong & 0x0F;
        assert_refused!(
            V3_1_1,
            bytes,
            DecodeError::InvalidFixedHeaderFlags { packet_type: t, flags: f }
                if t == packet_type && f == flags,
            MALFORMED
        );
        let header_only = &bytes[..2];
        let mut buf = BytesMut::from(header_only);
        assert!(
            decode(&mut buf, V3_1_1, MAX_PACKET_SIZE).is_err(),
            "{packet_type:?} header"
        );
        assert_eq!(
            accepted(V3_1_1, &body.frame(right)).packet_type(),
            packet_type
        );
    }
}

// ---------------------------------------------------------------------------
// PUBLISH (section 3.3)
// ---------------------------------------------------------------------------

/// MQTT-3.3.1-4: a PUBLISH with both QoS bits set is Malformed.
#[test]
fn mqtt_3_3_1_4_publish_with_qos_3_is_malformed() {
    let body = Body::new().string(b"a/b").u16(1);
    for version in [V3_1, V3_1_1] {
        assert_refused!(
            version,
            body.frame(0x36),
            DecodeError::InvalidQoS,
            MALFORMED
        );
        let Packet::Publish(message) = accepted(version, &body.frame(0x34)) else {
            panic!()
        };
        assert_eq!(message.qos, QoS::ExactlyOnce);
    }
    let body = body.properties(Body::new());
    assert_refused!(V5, body.frame(0x36), DecodeError::InvalidQoS, MALFORMED);
    accepted(V5, &body.frame(0x34));
}

/// MQTT-3.3.1-2: the DUP flag is 0 on every QoS 0 message; a Protocol Error.
#[test]
fn mqtt_3_3_1_2_dup_on_qos_0_is_a_protocol_error() {
    for version in VERSIONS {
        let bytes = publish(version, b"a/b", Body::new());
        let mut dup = bytes.clone();
        dup[0] |= 0x08;
        assert_refused!(version, dup, DecodeError::DupOnQoS0, PROTOCOL_ERROR);
        accepted(version, &bytes);
    }
    // Near miss: DUP on QoS 1 is fine.
    let dup_qos1 = Body::new().string(b"a/b").u16(7).frame(0x3A);
    let Packet::Publish(message) = accepted(V3_1_1, &dup_qos1) else {
        panic!()
    };
    assert!(message.dup);
}

/// MQTT-3.3.2-2: a topic name in PUBLISH contains no wildcard; 0x90.
#[test]
fn mqtt_3_3_2_2_publish_topic_with_a_wildcard_is_invalid() {
    for version in VERSIONS {
        for topic in [&b"a/+"[..], b"+", b"a/#", b"#", b"a+b/c", b"sport/tennis#"] {
            assert_refused!(
                version,
                publish(version, topic, Body::new()),
                DecodeError::InvalidTopicName(TopicError::WildcardInName),
                ReasonCode::TopicNameInvalid
            );
        }
        accepted(version, &publish(version, b"a/b", Body::new()));
    }
}

/// MQTT-4.7.3-1 (3.1.1): a topic name is at least one character long.
#[test]
fn mqtt_4_7_3_1_empty_topic_name_is_invalid_before_5_0() {
    for version in [V3_1, V3_1_1] {
        assert_refused!(
            version,
            publish(version, b"", Body::new()),
            DecodeError::InvalidTopicName(TopicError::Empty),
            ReasonCode::TopicNameInvalid
        );
        accepted(version, &publish(version, b"a", Body::new()));
    }
}

/// Section 3.3.2.1 (5.0): "It is a Protocol Error if the Topic Name is zero
/// length and there is no Topic Alias."
#[test]
fn v5_empty_topic_name_without_a_topic_alias_is_a_protocol_error() {
    assert_refused!(
        V5,
        publish(V5, b"", Body::new()),
        DecodeError::MissingTopicName,
        PROTOCOL_ERROR
    );
    let alias = Body::new().u8(0x23).u16(1);
    let Packet::Publish(message) = accepted(V5, &publish(V5, b"", alias)) else {
        panic!()
    };
    assert_eq!(
        message.properties.topic_alias.map(|alias| alias.get()),
        Some(1)
    );
    assert!(message.topic.is_empty());
}

/// MQTT-3.3.2-8: a Topic Alias of 0 is not permitted; 0x94 Topic Alias invalid.
#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_invalid() {
    for topic in [&b""[..], b"a/b"] {
        assert_refused!(
            V5,
            publish(V5, topic, Body::new().u8(0x23).u16(0)),
            DecodeError::InvalidPropertyValue(PropertyId::TopicAlias),
            ReasonCode::TopicAliasInvalid
        );
        accepted(V5, &publish(V5, topic, Body::new().u8(0x23).u16(65_535)));
    }
}

/// MQTT-2.2.1-3 (5.0), MQTT-2.3.1-1 (3.1.1): packet identifiers are non-zero.
#[test]
fn mqtt_2_2_1_3_packet_identifier_0_is_a_protocol_error() {
    for version in VERSIONS {
        let with_id = |id: u16| {
            let message = Body::new().string(b"a/b").u16(id);
            let message = if version.is_v5() {
                message.properties(Body::new())
            } else {
                message
            };
            let subscribe = Body::new().u16(id);
            let subscribe = if version.is_v5() {
                subscribe.properties(Body::new())
            } else {
                subscribe
            };
            let unsubscribe = subscribe.clone().string(b"a/b");
            let subscribe = subscribe.string(b"a/b").u8(1);
            [
                message.frame(0x32),
                message.frame(0x34),
                subscribe.frame(0x82),
                unsubscribe.frame(0xA2),
                Body::new().u16(id).frame(0x40),
                Body::new().u16(id).frame(0x50),
                Body::new().u16(id).frame(0x62),
                Body::new().u16(id).frame(0x70),
            ]
        };
        for (zero, one) in with_id(0).into_iter().zip(with_id(1)) {
            assert_refused!(version, zero, DecodeError::ZeroPacketId, PROTOCOL_ERROR);
            accepted(version, &one);
        }
    }
}

/// A string whose length runs past the end of the packet is Malformed.
#[test]
fn string_running_past_the_packet_end_is_malformed() {
    // Topic length 10, three bytes of topic, then the packet ends.
    let short = Body::new().u16(10).raw(b"a/b").frame(0x30);
    for version in VERSIONS {
        assert_refused!(version, short, DecodeError::Truncated, MALFORMED);
    }
    accepted(V3_1_1, &Body::new().u16(3).raw(b"a/b").frame(0x30));
    // A client id longer than what is left of a CONNECT.
    let connect = connect_header(V3_1_1, 0x02, Body::new())
        .u16(5)
        .raw(b"abc")
        .frame(0x10);
    assert_refused!(V3_1_1, connect, DecodeError::Truncated, MALFORMED);
    // A QoS 1 PUBLISH that ends before its packet identifier.
    let no_id = Body::new().string(b"a/b").u8(0).frame(0x32);
    assert_refused!(V3_1_1, no_id, DecodeError::Truncated, MALFORMED);
}

// ---------------------------------------------------------------------------
// Strings (section 1.5.4)
// ---------------------------------------------------------------------------

/// Byte sequences that are not well-formed UTF-8 (RFC 3629).
const NOT_UTF8: [&[u8]; 7] = [
    // Overlong encoding of '/'.
    &[b'a', 0xC0, 0xAF],
    // Overlong three-byte encoding of 'A'.
    &[0xE0, 0x81, 0x81],
    // A continuation byte with no lead byte.
    &[b'a', 0x80, b'b'],
    // The surrogate U+D800, encoded as UTF-8 would if it could.
    &[0xED, 0xA0, 0x80],
    // The surrogate U+DFFF.
    &[0xED, 0xBF, 0xBF],
    // Above U+10FFFF.
    &[0xF4, 0x90, 0x80, 0x80],
    // A three-byte sequence cut short.
    &[0xE2, 0x82],
];

/// Well-formed multi-byte text: the near miss for every case above.
const UTF8: &[u8] = "é/€/😀".as_bytes();

/// MQTT-1.5.4-1: strings are well-formed UTF-8 and contain no encoded
/// surrogates; anything else is Malformed, wherever the string is.
#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_is_malformed() {
    let user_property = |name: &[u8], value: &[u8]| Body::new().u8(0x26).string(name).string(value);
    for bad in NOT_UTF8 {
        for version in VERSIONS {
            // Topic name.
            assert_refused!(
                version,
                publish(version, bad, Body::new()),
                DecodeError::InvalidUtf8,
                MALFORMED
            );
            // Client identifier.
            let connect = connect_header(version, 0x02, Body::new())
                .string(bad)
                .frame(0x10);
            assert_refused!(version, connect, DecodeError::InvalidUtf8, MALFORMED);
            // User name.
            let connect = connect_header(version, 0x82, Body::new())
                .string(b"c")
                .string(bad)
                .frame(0x10);
            assert_refused!(version, connect, DecodeError::InvalidUtf8, MALFORMED);
            // Topic filter.
            let filter = if version.is_v5() {
                Body::new().u16(1).properties(Body::new())
            } else {
                Body::new().u16(1)
            };
            assert_refused!(
                version,
                filter.string(bad).u8(0).frame(0x82),
                DecodeError::InvalidUtf8,
                MALFORMED
            );
        }
        // User property name and value.
        for props in [user_property(bad, b"v"), user_property(b"k", bad)] {
            assert_refused!(
                V5,
                publish(V5, b"a/b", props),
                DecodeError::InvalidUtf8,
                MALFORMED
            );
        }
        // Reason String in a PUBACK.
        let puback = Body::new()
            .u16(1)
            .u8(0)
            .properties(Body::new().u8(0x1F).string(bad));
        assert_refused!(V5, puback.frame(0x40), DecodeError::InvalidUtf8, MALFORMED);
    }
    // Near misses: the same places with well-formed multi-byte text.
    for version in VERSIONS {
        accepted(version, &publish(version, UTF8, Body::new()));
        accepted(
            version,
            &connect_header(version, 0x02, Body::new())
                .string(UTF8)
                .frame(0x10),
        );
    }
    let Packet::Publish(message) = accepted(V5, &publish(V5, b"a/b", user_property(UTF8, UTF8)))
    else {
        panic!()
    };
    assert_eq!(message.properties.message.user_properties[0].0, "é/€/😀");
}

/// MQTT-1.5.4-2: a string contains no U+0000, though it is valid UTF-8.
#[test]
fn mqtt_1_5_4_2_null_character_in_a_string_is_malformed() {
    for version in VERSIONS {
        assert_refused!(
            version,
            publish(version, b"a/\0/b", Body::new()),
            DecodeError::NullCharacter,
            MALFORMED
        );
        let connect = connect_header(version, 0x02, Body::new())
            .string(b"c\0")
            .frame(0x10);
        assert_refused!(version, connect, DecodeError::NullCharacter, MALFORMED);
    }
    let props = Body::new().u8(0x26).string(b"k").string(b"\0");
    assert_refused!(
        V5,
        publish(V5, b"a/b", props),
        DecodeError::NullCharacter,
        MALFORMED
    );
    // Near miss: U+0001 is allowed (a SHOULD NOT, not a MUST NOT).
    accepted(V5, &publish(V5, b"a/\x01/b", Body::new()));
}

// ---------------------------------------------------------------------------
// Lengths: trailing bytes and oversized packets
// ---------------------------------------------------------------------------

/// A packet with bytes after its last field is Malformed.
#[test]
fn trailing_bytes_after_a_packet_are_malformed() {
    for version in VERSIONS {
        assert_refused!(
            version,
            [0xC0, 0x01, 0x00],
            DecodeError::TrailingBytes(1),
            MALFORMED
        );
        assert_refused!(
            version,
            [0xD0, 0x02, 0x00, 0x00],
            DecodeError::TrailingBytes(2),
            MALFORMED
        );
        let connect = connect_header(version, 0x02, Body::new())
            .string(b"c")
            .u8(0)
            .frame(0x10);
        assert_refused!(version, connect, DecodeError::TrailingBytes(1), MALFORMED);
        accepted(
            version,
            &connect_header(version, 0x02, Body::new())
                .string(b"c")
                .frame(0x10),
        );
    }
    for version in [V3_1, V3_1_1] {
        // A 3.x PUBACK is just its packet identifier...
        assert_refused!(
            version,
            [0x40, 0x03, 0x00, 0x01, 0x00],
            DecodeError::TrailingBytes(1),
            MALFORMED
        );
        // ...and a 3.x DISCONNECT is empty.
        assert_refused!(
            version,
            [0xE0, 0x01, 0x00],
            DecodeError::TrailingBytes(1),
            MALFORMED
        );
        // 3.x UNSUBACK likewise.
        assert_refused!(
            version,
            [0xB0, 0x03, 0x00, 0x01, 0x00],
            DecodeError::TrailingBytes(1),
            MALFORMED
        );
    }
    // Near misses: in 5.0 those bytes are a reason code.
    accepted(V5, &[0x40, 0x03, 0x00, 0x01, 0x00]);
    accepted(V5, &[0xE0, 0x01, 0x00]);
    accepted(V5, &[0xB0, 0x03, 0x00, 0x01, 0x00]);
}

/// MQTT-3.1.2-24 (a server's limit), MQTT-3.2.2-15 (a client's): a packet
/// larger than the Maximum Packet Size is refused with 0x95, from its header.
#[test]
fn packet_larger_than_the_maximum_packet_size_is_refused() {
    for version in VERSIONS {
        let payload = [0x5A; 200];
        let topic = Body::new().string(b"a/b");
        let topic = if version.is_v5() {
            topic.properties(Body::new())
        } else {
            topic
        };
        let bytes = topic.raw(&payload).frame(0x30);
        let size = bytes.len();
        let error = refused_within(version, &bytes, 100);
        assert_eq!(error, DecodeError::PacketTooLarge { size, max: 100 });
        assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);
        // Refused from the fixed header alone.
        let mut header = BytesMut::from(&bytes[..3]);
        assert_eq!(decode(&mut header, version, 100), Err(error));
        // Near miss: a limit of exactly its size admits it.
        let mut buf = BytesMut::from(&bytes[..]);
        let limit = u32::try_from(size).unwrap();
        assert!(matches!(
            decode(&mut buf, version, limit),
            Ok(Some(Packet::Publish(_)))
        ));
    }
}

// ---------------------------------------------------------------------------
// CONNECT (section 3.1) and CONNACK (section 3.2)
// ---------------------------------------------------------------------------

/// MQTT-3.1.2-1: a protocol name other than `MQTT` (or `MQIsdp` for 3.1);
/// the server may answer 0x84 Unsupported Protocol Version.
#[test]
fn mqtt_3_1_2_1_unknown_protocol_name_is_refused() {
    for name in [&b"MQTX"[..], b"mqtt", b"MQIsdpX", b"", b"MQ\xC0\xAF"] {
        let bytes = Body::new()
            .string(name)
            .u8(4)
            .u8(0x02)
            .u16(60)
            .string(b"c")
            .frame(0x10);
        assert_refused!(
            V3_1_1,
            bytes,
            DecodeError::InvalidProtocolName,
            ReasonCode::UnsupportedProtocolVersion
        );
    }
    let bytes = Body::new()
        .string(b"MQTT")
        .u8(4)
        .u8(0x02)
        .u16(60)
        .string(b"c")
        .frame(0x10);
    accepted(V3_1_1, &bytes);
}

/// MQTT-3.1.2-2: a protocol level the server does not speak; 0x84.
#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_is_refused() {
    for (name, level) in [
        (&b"MQTT"[..], 6),
        (b"MQTT", 3),
        (b"MQTT", 0),
        (b"MQIsdp", 4),
    ] {
        let bytes = Body::new()
            .string(name)
            .u8(level)
            .u8(0x02)
            .u16(60)
            .string(b"c")
            .frame(0x10);
        assert_refused!(
            V3_1_1,
            bytes,
            DecodeError::UnsupportedProtocolVersion(l) if l == level,
            ReasonCode::UnsupportedProtocolVersion
        );
    }
    for version in VERSIONS {
        let Packet::Connect(connect) = accepted(V3_1_1, &connect(version, Body::new())) else {
            panic!()
        };
        assert_eq!(connect.protocol, version);
    }
}

/// MQTT-3.1.2-3: the reserved flag of CONNECT is 0, else Malformed.
#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_set_is_malformed() {
    for version in VERSIONS {
        let bytes = connect_header(version, 0x03, Body::new())
            .string(b"c")
            .frame(0x10);
        assert_refused!(version, bytes, DecodeError::ReservedConnectFlag, MALFORMED);
        accepted(
            version,
            &connect_header(version, 0x02, Body::new())
                .string(b"c")
                .frame(0x10),
        );
    }
}

/// The payload after the client id of a CONNECT with a will: will properties
/// in 5.0, topic `w`, payload `bye`.
fn will_tail(version: ProtocolVersion) -> Body {
    let body = Body::new().string(b"c");
    let body = if version.is_v5() {
        body.properties(Body::new())
    } else {
        body
    };
    body.string(b"w").string(b"bye")
}

/// MQTT-3.1.2-12 (5.0; MQTT-3.1.2-14 in 3.1.1): Will QoS 3 is Malformed.
#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    for version in VERSIONS {
        let header = connect_header(version, 0x02 | 0x04 | 0x18, Body::new());
        let bytes = header.raw(&will_tail(version).0).frame(0x10);
        assert_refused!(version, bytes, DecodeError::InvalidWillFlags, MALFORMED);
        // Near miss: Will QoS 2.
        let header = connect_header(version, 0x02 | 0x04 | 0x10, Body::new());
        let Packet::Connect(connect) =
            accepted(version, &header.raw(&will_tail(version).0).frame(0x10))
        else {
            panic!()
        };
        assert_eq!(connect.will.map(|will| will.qos), Some(QoS::ExactlyOnce));
    }
}

/// MQTT-3.1.2-11 and MQTT-3.1.2-13 (5.0; MQTT-3.1.2-13 and -15 in 3.1.1):
/// without the Will Flag, Will QoS and Will Retain are 0.
#[test]
fn mqtt_3_1_2_13_will_retain_or_qos_without_will_flag_is_malformed() {
    for version in VERSIONS {
        for flags in [0x22, 0x0A, 0x12, 0x3A] {
            let bytes = connect_header(version, flags, Body::new())
                .string(b"c")
                .frame(0x10);
            assert_refused!(version, bytes, DecodeError::InvalidWillFlags, MALFORMED);
        }
        // Near miss: with the Will Flag, Will Retain and QoS 1 are fine.
        let header = connect_header(version, 0x02 | 0x04 | 0x08 | 0x20, Body::new());
        let Packet::Connect(connect) =
            accepted(version, &header.raw(&will_tail(version).0).frame(0x10))
        else {
            panic!()
        };
        let will = connect.will.unwrap();
        assert!(will.retain);
        assert_eq!(will.qos, QoS::AtLeastOnce);
    }
}

/// MQTT-3.1.2-22 (3.1.1): a password without a user name is Malformed; 5.0
/// allows it (section 3.1.2.9: "This version of the protocol allows the
/// sending of a Password with no User Name").
#[test]
fn mqtt_3_1_2_22_password_without_user_name_is_malformed_before_5_0_only() {
    for version in [V3_1, V3_1_1] {
        let bytes = connect_header(version, 0x42, Body::new())
            .string(b"c")
            .string(b"pw")
            .frame(0x10);
        assert_refused!(
            version,
            bytes,
            DecodeError::PasswordWithoutUserName,
            MALFORMED
        );
        let with_user = connect_header(version, 0xC2, Body::new())
            .string(b"c")
            .string(b"u")
            .string(b"pw");
        accepted(version, &with_user.frame(0x10));
    }
    let bytes = connect_header(V5, 0x42, Body::new())
        .string(b"c")
        .string(b"pw")
        .frame(0x10);
    let Packet::Connect(connect) = accepted(V5, &bytes) else {
        panic!()
    };
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}

/// MQTT-3.1.3-11 ff.: the Will Topic is a topic name, so no wildcards.
#[test]
fn will_topic_with_a_wildcard_is_invalid() {
    for version in VERSIONS {
        let tail = Body::new().string(b"c");
        let tail = if version.is_v5() {
            tail.properties(Body::new())
        } else {
            tail
        };
        let bytes = connect_header(version, 0x06, Body::new())
            .raw(&tail.string(b"w/#").string(b"bye").0)
            .frame(0x10);
        assert_refused!(
            version,
            bytes,
            DecodeError::InvalidTopicName(TopicError::WildcardInName),
            ReasonCode::TopicNameInvalid
        );
    }
}

/// MQTT-3.2.2-1: bits 7 to 1 of CONNACK's acknowledge flags are reserved.
#[test]
fn mqtt_3_2_2_1_connack_reserved_flags_set_is_malformed() {
    for flags in [0x02, 0x80, 0xFF] {
        assert_refused!(
            V3_1_1,
            [0x20, 0x02, flags, 0x00],
            DecodeError::InvalidConnAckFlags,
            MALFORMED
        );
        assert_refused!(
            V5,
            [0x20, 0x03, flags, 0x00, 0x00],
            DecodeError::InvalidConnAckFlags,
            MALFORMED
        );
    }
    let Packet::ConnAck(connack) = accepted(V3_1_1, &[0x20, 0x02, 0x01, 0x00]) else {
        panic!()
    };
    assert!(connack.session_present);
    accepted(V5, &[0x20, 0x03, 0x01, 0x00, 0x00]);
}

/// 3.1.1 table 3.1: CONNACK return codes 6 to 255 are reserved.
#[test]
fn connack_with_an_unknown_return_code_is_malformed() {
    for version in [V3_1, V3_1_1] {
        for code in [6, 0x80, 0xFF] {
            assert_refused!(
                version,
                [0x20, 0x02, 0x00, code],
                DecodeError::InvalidReasonCode { packet_type: PacketType::ConnAck, code: c }
                    if c == code,
                MALFORMED
            );
        }
        let Packet::ConnAck(connack) = accepted(version, &[0x20, 0x02, 0x00, 0x05]) else {
            panic!()
        };
        assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
    }
    // 5.0: 0x03 is no reason code; 0x04 is one CONNACK may not carry.
    for code in [0x03, 0x04, 0x8E] {
        assert_refused!(
            V5,
            [0x20, 0x03, 0x00, code, 0x00],
            DecodeError::InvalidReasonCode { packet_type: PacketType::ConnAck, code: c } if c == code,
            MALFORMED
        );
    }
    accepted(V5, &[0x20, 0x03, 0x00, 0x87, 0x00]);
}

// ---------------------------------------------------------------------------
// Properties (section 2.2.2)
// ---------------------------------------------------------------------------

/// Section 2.2.2.2: an identifier the spec does not define is Malformed.
#[test]
fn unknown_property_identifier_is_malformed() {
    for id in [0x00, 0x05, 0x2B, 0x7F] {
        let props = Body::new().u8(id).u8(0);
        assert_refused!(
            V5,
            publish(V5, b"a/b", props.clone()),
            DecodeError::UnknownProperty(i) if i == u32::from(id),
            MALFORMED
        );
        assert_refused!(
            V5,
            connect(V5, props),
            DecodeError::UnknownProperty(_),
            MALFORMED
        );
    }
    // A two-byte identifier, 128.
    let props = Body::new().varint(128).u8(0);
    assert_refused!(
        V5,
        publish(V5, b"a/b", props),
        DecodeError::UnknownProperty(128),
        MALFORMED
    );
    // Near miss: a known one-byte property.
    accepted(V5, &publish(V5, b"a/b", Body::new().u8(0x01).u8(1)));
}

/// Section 2.2.2.2: "A Control Packet which contains an Identifier which is
/// not valid for its packet type ... is a Malformed Packet."
#[test]
fn property_not_allowed_in_the_packet_is_malformed() {
    let alias = Body::new().u8(0x23).u16(1);
    assert_refused!(
        V5,
        connect(V5, alias.clone()),
        DecodeError::PropertyNotAllowed {
            property: PropertyId::TopicAlias,
            packet_type: PacketType::Connect
        },
        MALFORMED
    );
    let session_expiry = Body::new().u8(0x11).u32(10);
    assert_refused!(
        V5,
        publish(V5, b"a/b", session_expiry.clone()),
        DecodeError::PropertyNotAllowed {
            property: PropertyId::SessionExpiryInterval,
            packet_type: PacketType::Publish
        },
        MALFORMED
    );
    // A will property among CONNECT's own properties.
    assert_refused!(
        V5,
        connect(V5, Body::new().u8(0x18).u32(5)),
        DecodeError::PropertyNotAllowed {
            property: PropertyId::WillDelayInterval,
            ..
        },
        MALFORMED
    );
    // A Subscription Identifier in a PUBACK, a Reason String in a SUBSCRIBE.
    let puback = Body::new()
        .u16(1)
        .u8(0)
        .properties(Body::new().u8(0x0B).u8(1));
    assert_refused!(
        V5,
        puback.frame(0x40),
        DecodeError::PropertyNotAllowed {
            property: PropertyId::SubscriptionIdentifier,
            ..
        },
        MALFORMED
    );
    assert_refused!(
        V5,
        subscribe(V5, 0, Body::new().u8(0x1F).string(b"why")),
        DecodeError::PropertyNotAllowed {
            property: PropertyId::ReasonString,
            ..
        },
        MALFORMED
    );
    // Near misses: each where it belongs.
    accepted(V5, &publish(V5, b"a/b", alias));
    accepted(V5, &connect(V5, session_expiry));
}

/// Each property's text: "It is a Protocol Error to include ... more than once";
/// User Property and PUBLISH's Subscription Identifier may repeat.
#[test]
fn duplicate_property_is_a_protocol_error() {
    let twice = Body::new().u8(0x02).u32(10).u8(0x02).u32(20);
    assert_refused!(
        V5,
        publish(V5, b"a/b", twice),
        DecodeError::DuplicateProperty(PropertyId::MessageExpiryInterval),
        PROTOCOL_ERROR
    );
    let twice = Body::new().u8(0x21).u16(5).u8(0x21).u16(5);
    assert_refused!(
        V5,
        connect(V5, twice),
        DecodeError::DuplicateProperty(PropertyId::ReceiveMaximum),
        PROTOCOL_ERROR
    );
    // Section 3.8.2.1.2: one Subscription Identifier per SUBSCRIBE.
    let twice = Body::new().u8(0x0B).u8(1).u8(0x0B).u8(2);
    assert_refused!(
        V5,
        subscribe(V5, 0, twice),
        DecodeError::DuplicateProperty(PropertyId::SubscriptionIdentifier),
        PROTOCOL_ERROR
    );
    // Near miss: two User Properties (same name even) and two Subscription
    // Identifiers in one PUBLISH (MQTT-3.3.4-4: one per matching subscription).
    let repeats = Body::new()
        .u8(0x26)
        .string(b"k")
        .string(b"1")
        .u8(0x0B)
        .varint(3)
        .u8(0x26)
        .string(b"k")
        .string(b"2")
        .u8(0x0B)
        .varint(200_000);
    let Packet::Publish(message) = accepted(V5, &publish(V5, b"a/b", repeats)) else {
        panic!()
    };
    let ids: Vec<u32> = message
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect();
    assert_eq!(ids, [3, 200_000]);
    let pairs: Vec<(&str, &str)> = message
        .properties
        .message
        .user_properties
        .iter()
        .map(|(name, value)| (&name[..], &value[..]))
        .collect();
    assert_eq!(pairs, [("k", "1"), ("k", "2")]);
}

/// Values outside a property's range: each is a Protocol Error per its text
/// (Receive Maximum 0, Maximum Packet Size 0, Request Problem Information
/// other than 0 or 1, Maximum QoS other than 0 or 1, Subscription Identifier
/// 0), and a Payload Format Indicator is 0 or 1.
#[test]
fn property_value_out_of_range_is_a_protocol_error() {
    let connect_cases = [
        (
            PropertyId::ReceiveMaximum,
            Body::new().u8(0x21).u16(0),
            Body::new().u8(0x21).u16(1),
        ),
        (
            PropertyId::MaximumPacketSize,
            Body::new().u8(0x27).u32(0),
            Body::new().u8(0x27).u32(1),
        ),
        (
            PropertyId::RequestProblemInformation,
            Body::new().u8(0x17).u8(2),
            Body::new().u8(0x17).u8(1),
        ),
        (
            PropertyId::RequestResponseInformation,
            Body::new().u8(0x19).u8(2),
            Body::new().u8(0x19).u8(1),
        ),
    ];
    for (property, bad, good) in connect_cases {
        assert_refused!(
            V5,
            connect(V5, bad),
            DecodeError::InvalidPropertyValue(p) if p == property,
            PROTOCOL_ERROR
        );
        accepted(V5, &connect(V5, good));
    }
    assert_refused!(
        V5,
        publish(V5, b"a/b", Body::new().u8(0x01).u8(2)),
        DecodeError::InvalidPropertyValue(PropertyId::PayloadFormatIndicator),
        PROTOCOL_ERROR
    );
    let Packet::Publish(message) = accepted(V5, &publish(V5, b"a/b", Body::new().u8(0x01).u8(1)))
    else {
        panic!()
    };
    assert_eq!(
        message.properties.message.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
    // Maximum QoS 2 in CONNACK (section 3.2.2.3.4): 2 is said by leaving it out.
    let connack = |props: Body| Body::new().u8(0).u8(0).properties(props).frame(0x20);
    assert_refused!(
        V5,
        connack(Body::new().u8(0x24).u8(2)),
        DecodeError::InvalidPropertyValue(PropertyId::MaximumQoS),
        PROTOCOL_ERROR
    );
    assert_refused!(
        V5,
        connack(Body::new().u8(0x25).u8(2)),
        DecodeError::InvalidPropertyValue(PropertyId::RetainAvailable),
        PROTOCOL_ERROR
    );
    accepted(V5, &connack(Body::new().u8(0x24).u8(1).u8(0x25).u8(0)));
    // Subscription Identifier 0, in SUBSCRIBE and in PUBLISH.
    assert_refused!(
        V5,
        subscribe(V5, 0, Body::new().u8(0x0B).u8(0)),
        DecodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
        PROTOCOL_ERROR
    );
    assert_refused!(
        V5,
        publish(V5, b"a/b", Body::new().u8(0x0B).u8(0)),
        DecodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
        PROTOCOL_ERROR
    );
    accepted(
        V5,
        &subscribe(V5, 0, Body::new().u8(0x0B).varint(268_435_455)),
    );
}

/// Sections 3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3: Authentication Data without
/// an Authentication Method is a Protocol Error.
#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let data = Body::new().u8(0x16).string(b"\x01\x02");
    let both = Body::new()
        .u8(0x15)
        .string(b"SCRAM-SHA-1")
        .u8(0x16)
        .string(b"\x01\x02");
    let connack = |props: Body| Body::new().u8(0).u8(0).properties(props).frame(0x20);
    let auth = |props: Body| Body::new().u8(0x18).properties(props).frame(0xF0);
    let packets: [fn(Body) -> Vec<u8>; 3] = [|props| connect(V5, props), connack, auth];
    for packet in packets {
        assert_refused!(
            V5,
            packet(data.clone()),
            DecodeError::AuthenticationDataWithoutMethod,
            PROTOCOL_ERROR
        );
        accepted(V5, &packet(both.clone()));
    }
}

/// MQTT-3.3.2-14: the Response Topic contains no wildcards.
#[test]
fn response_topic_with_a_wildcard_is_refused() {
    for topic in [&b"reply/+"[..], b"reply/#"] {
        assert_refused!(
            V5,
            publish(V5, b"a/b", Body::new().u8(0x08).string(topic)),
            DecodeError::InvalidPropertyValue(PropertyId::ResponseTopic),
            PROTOCOL_ERROR
        );
    }
    accepted(
        V5,
        &publish(V5, b"a/b", Body::new().u8(0x08).string(b"reply/me")),
    );
}

/// A property list whose length runs past the packet, or a property whose
/// value runs past its list, is Malformed.
#[test]
fn property_length_running_past_the_packet_is_malformed() {
    // Property length 10, three bytes of properties, then the packet ends.
    let bytes = Body::new()
        .string(b"a/b")
        .varint(10)
        .raw(&[0x23, 0x00, 0x01])
        .frame(0x30);
    assert_refused!(V5, bytes, DecodeError::Truncated, MALFORMED);
    // The list says 2 bytes but Message Expiry needs 5: the payload after the
    // list must not be read as the rest of the value.
    let bytes = Body::new()
        .string(b"a/b")
        .varint(2)
        .raw(&[0x02, 0x00])
        .raw(b"payload")
        .frame(0x30);
    assert_refused!(V5, bytes, DecodeError::Truncated, MALFORMED);
    // Near miss: the right length.
    let bytes = Body::new()
        .string(b"a/b")
        .varint(5)
        .raw(&[0x02, 0, 0, 0, 9])
        .raw(b"pl")
        .frame(0x30);
    let Packet::Publish(message) = accepted(V5, &bytes) else {
        panic!()
    };
    assert_eq!(message.properties.message.message_expiry_interval, Some(9));
    assert_eq!(&message.payload[..], b"pl");
}

// ---------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE (sections 3.8, 3.10)
// ---------------------------------------------------------------------------

/// MQTT-3.8.3-2 (5.0; MQTT-3.8.3-3 in 3.1.1): at least one topic filter.
#[test]
fn mqtt_3_8_3_2_subscribe_without_filters_is_a_protocol_error() {
    for version in [V3_1, V3_1_1] {
        assert_refused!(
            version,
            Body::new().u16(1).frame(0x82),
            DecodeError::EmptySubscribe,
            PROTOCOL_ERROR
        );
    }
    let empty = Body::new().u16(1).properties(Body::new());
    assert_refused!(
        V5,
        empty.frame(0x82),
        DecodeError::EmptySubscribe,
        PROTOCOL_ERROR
    );
    // A filter without its options byte is a truncation, not an empty list.
    let no_options = Body::new().u16(1).properties(Body::new()).string(b"a/b");
    assert_refused!(
        V5,
        no_options.frame(0x82),
        DecodeError::Truncated,
        MALFORMED
    );
    for version in VERSIONS {
        accepted(version, &subscribe(version, 1, Body::new()));
    }
}

/// MQTT-3.8.3-5 (5.0): bits 7 and 6 of the options are reserved;
/// MQTT-3.8.3-4 (3.1.1): bits 7 to 2 are reserved and QoS 3 is not allowed.
#[test]
fn mqtt_3_8_3_5_subscription_options_with_reserved_bits_are_malformed() {
    for options in [0x40, 0x80, 0xC1] {
        assert_refused!(
            V5,
            subscribe(V5, options, Body::new()),
            DecodeError::InvalidSubscriptionOptions(o) if o == options,
            MALFORMED
        );
    }
    for version in [V3_1, V3_1_1] {
        for options in [0x03, 0x04, 0x08, 0x10, 0x80] {
            assert_refused!(
                version,
                subscribe(version, options, Body::new()),
                DecodeError::InvalidSubscriptionOptions(o) if o == options,
                MALFORMED
            );
        }
        accepted(version, &subscribe(version, 0x02, Body::new()));
    }
    // Near miss: every defined 5.0 option bit at once.
    let Packet::Subscribe(request) = accepted(V5, &subscribe(V5, 0x2E, Body::new())) else {
        panic!()
    };
    let options = request.subscriptions[0].options;
    assert_eq!(options.qos, QoS::ExactlyOnce);
    assert!(options.no_local && options.retain_as_published);
    assert_eq!(options.retain_handling, RetainHandling::DoNotSend);
}

/// Section 3.8.3.1 (5.0): "It is a Protocol Error if the Maximum QoS field has
/// the value 3" and "to send a Retain Handling value of 3".
#[test]
fn subscription_qos_3_or_retain_handling_3_is_a_protocol_error() {
    assert_refused!(
        V5,
        subscribe(V5, 0x03, Body::new()),
        DecodeError::InvalidSubscriptionQoS,
        PROTOCOL_ERROR
    );
    assert_refused!(
        V5,
        subscribe(V5, 0x30, Body::new()),
        DecodeError::InvalidRetainHandling,
        PROTOCOL_ERROR
    );
    assert_refused!(
        V5,
        subscribe(V5, 0x32, Body::new()),
        DecodeError::InvalidRetainHandling,
        PROTOCOL_ERROR
    );
    accepted(V5, &subscribe(V5, 0x22, Body::new()));
}

/// MQTT-3.10.3-2: an UNSUBSCRIBE carries at least one topic filter.
#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_is_a_protocol_error() {
    for version in [V3_1, V3_1_1] {
        assert_refused!(
            version,
            Body::new().u16(1).frame(0xA2),
            DecodeError::EmptyUnsubscribe,
            PROTOCOL_ERROR
        );
        accepted(version, &Body::new().u16(1).string(b"a/#").frame(0xA2));
    }
    let empty = Body::new().u16(1).properties(Body::new());
    assert_refused!(
        V5,
        empty.frame(0xA2),
        DecodeError::EmptyUnsubscribe,
        PROTOCOL_ERROR
    );
    accepted(V5, &empty.string(b"a/#").frame(0xA2));
}

// ---------------------------------------------------------------------------
// Reason codes (section 2.4 and each packet's table)
// ---------------------------------------------------------------------------

/// Each packet may carry only the reason codes of its table; anything else
/// is refused as Malformed.
#[test]
fn reason_code_not_allowed_in_the_packet_is_malformed() {
    // (first byte, fields before the code, code refused, code accepted, packet type)
    let id = Body::new().u16(1);
    let props = Body::new().u16(1).properties(Body::new());
    let cases: [(u8, &Body, u8, u8, PacketType); 10] = [
        (0x62, &id, 0x80, 0x92, PacketType::PubRel),
        (0x62, &id, 0x10, 0x00, PacketType::PubRel),
        (0x70, &id, 0x87, 0x92, PacketType::PubComp),
        (0x40, &id, 0x03, 0x10, PacketType::PubAck),
        (0x50, &id, 0x92, 0x97, PacketType::PubRec),
        (0x90, &props, 0x04, 0x02, PacketType::SubAck),
        (0x90, &props, 0x03, 0xA2, PacketType::SubAck),
        (0xB0, &props, 0x02, 0x11, PacketType::UnsubAck),
        (0xE0, &Body::new(), 0x18, 0x04, PacketType::Disconnect),
        (0xF0, &Body::new(), 0x04, 0x19, PacketType::Auth),
    ];
    for (first, before, bad, good, packet_type) in cases {
        assert_refused!(
            V5,
            before.clone().u8(bad).frame(first),
            DecodeError::InvalidReasonCode { packet_type: t, code } if t == packet_type && code == bad,
            MALFORMED
        );
        assert_eq!(
            accepted(V5, &before.clone().u8(good).frame(first)).packet_type(),
            packet_type
        );
    }
    // 3.1.1 SUBACK: 0x00, 0x01, 0x02 and 0x80 only.
    for bad in [0x03, 0x81, 0x8F] {
        assert_refused!(
            V3_1_1,
            Body::new().u16(1).u8(bad).frame(0x90),
            DecodeError::InvalidReasonCode { packet_type: PacketType::SubAck, code } if code == bad,
            MALFORMED
        );
    }
    let Packet::SubAck(suback) = accepted(V3_1_1, &Body::new().u16(1).u8(0x80).u8(1).frame(0x90))
    else {
        panic!()
    };
    assert_eq!(
        suback.reason_codes,
        [ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );
}
