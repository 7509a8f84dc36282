//! The fixed header (section 2.1) and the [`Packet`] type: the entry points
//! [`decode`] and [`Packet::encode`].

use bytes::{Buf, BufMut, BytesMut};

use crate::connect::{ConnAck, Connect};
use crate::control::{Auth, Disconnect};
use crate::error::{DecodeError, EncodeError};
use crate::publish::{Ack, Publish};
use crate::subscribe::{SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::types::{PacketType, ProtocolVersion};
use crate::wire::{
    Encode, MAX_VARIABLE_INTEGER, Reader, Sink, parse_variable_integer, put_variable_integer,
    variable_integer_len,
};

/// Any MQTT control packet of any protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT, boxed: large and rare.
    Connect(Box<Connect>),
    /// CONNACK, boxed: large and rare.
    ConnAck(Box<ConnAck>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Auth),
}

/// Decodes the first packet in `buf` and removes it from the buffer.
///
/// Returns `Ok(None)` when `buf` holds only part of a packet: read more and
/// call again. A packet larger than `max_packet_size` is refused as soon as its
/// fixed header arrives, before its body is buffered. `version` is the
/// connection's protocol version, fixed by its CONNECT; a CONNECT itself is
/// decoded by its own protocol level whatever `version` says. Payloads and
/// strings in the packet share `buf`'s memory rather than copying it.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining_length, length_bytes)) = parse_variable_integer(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + length_bytes;
    let size = header_len + remaining_length as usize;
    if size > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    let (packet_type, flags) = check_fixed_header(first, version)?;
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    let mut reader = Reader::new(frame);
    let packet = decode_body(packet_type, flags, &mut reader, version)?;
    reader.finish()?;
    Ok(Some(packet))
}

/// Checks the first byte of a fixed header (MQTT-2.1.3-1) as soon as it arrives.
fn check_fixed_header(
    first: u8,
    version: ProtocolVersion,
) -> Result<(PacketType, u8), DecodeError> {
    let nibble = first >> 4;
    let packet_type = match PacketType::from_nibble(nibble) {
        Some(PacketType::Auth) if !version.is_v5() => None,
        other => other,
    }
    .ok_or(DecodeError::ReservedPacketType(nibble))?;
    let flags = first & 0x0F;
    if packet_type != PacketType::Publish && flags != packet_type.required_flags() {
        return Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags });
    }
    Ok((packet_type, flags))
}

fn decode_body(
    packet_type: PacketType,
    flags: u8,
    reader: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    Ok(match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(Connect::decode(reader)?)),
        PacketType::ConnAck => Packet::ConnAck(Box::new(ConnAck::decode(reader, version)?)),
        PacketType::Publish => Packet::Publish(Publish::decode(flags, reader, version)?),
        PacketType::PubAck => Packet::PubAck(Ack::decode(packet_type, reader, version)?),
        PacketType::PubRec => Packet::PubRec(Ack::decode(packet_type, reader, version)?),
        PacketType::PubRel => Packet::PubRel(Ack::decode(packet_type, reader, version)?),
        PacketType::PubComp => Packet::PubComp(Ack::decode(packet_type, reader, version)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(reader, version)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(reader, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(reader, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(reader, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(reader, version)?),
        PacketType::Auth => Packet::Auth(Auth::decode(reader)?),
    })
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// Appends the packet to `buf` as `version` encodes it and returns its
    /// size. Fields that `version` lacks (properties and reason codes before
    /// 5.0) are left out; a CONNECT is encoded by its own protocol version.
    pub fn encode(
        &self,
        version: ProtocolVersion,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        self.encode_within(version, u32::MAX, buf)
    }

    /// Like [`Packet::encode`], but refuses, writing nothing, a packet larger
    /// than `max_packet_size`: the peer's Maximum Packet Size, which a sender
    /// must respect (MQTT-3.1.2-24, MQTT-3.2.2-15).
    pub fn encode_within(
        &self,
        version: ProtocolVersion,
        max_packet_size: u32,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let body = Body {
            packet: self,
            version,
        };
        let body_len = body.encoded_len()?;
        let remaining_length = u32::try_from(body_len)
            .ok()
            .filter(|len| *len <= MAX_VARIABLE_INTEGER)
            .ok_or(EncodeError::RemainingLengthTooLarge(body_len))?;
        let size = 1 + variable_integer_len(remaining_length) + body_len;
        if size > max_packet_size as usize {
            return Err(EncodeError::PacketTooLarge {
                size,
                max: max_packet_size,
            });
        }
        if let Self::Auth(_) = self
            && !version.is_v5()
        {
            return Err(EncodeError::UnsupportedInVersion {
                packet_type: PacketType::Auth,
                version,
            });
        }
        buf.reserve(size);
        let flags = match self {
            Self::Publish(publish) => publish.flags(),
            other => other.packet_type().required_flags(),
        };
        BufMut::put_u8(buf, ((self.packet_type() as u8) << 4) | flags);
        put_variable_integer(buf, remaining_length)?;
        body.encode(buf)?;
        Ok(size)
    }
}

/// A packet's variable header and payload: what the remaining length counts.
struct Body<'a> {
    packet: &'a Packet,
    version: ProtocolVersion,
}

impl Encode for Body<'_> {
    fn encode<S: Sink>(&self, sink: &mut S) -> Result<(), EncodeError> {
        let version = self.version;
        match self.packet {
            Packet::Connect(connect) => connect.encode_body(sink),
            Packet::ConnAck(connack) => connack.encode_body(version, sink),
            Packet::Publish(publish) => publish.encode_body(version, sink),
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => ack.encode_body(version, sink),
            Packet::Subscribe(subscribe) => subscribe.encode_body(version, sink),
            Packet::SubAck(suback) => suback.encode_body(version, sink),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.encode_body(version, sink),
            Packet::UnsubAck(unsuback) => unsuback.encode_body(version, sink),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(disconnect) => disconnect.encode_body(version, sink),
            Packet::Auth(auth) => auth.encode_body(sink),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::reason::ReasonCode;
    use crate::types::{PacketId, QoS};
    use crate::{ByteString, Disconnect, PublishProperties};

    fn publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from(topic),
            packet_id: PacketId::new(id),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(payload),
        })
    }

    #[test]
    fn v3_1_1_connect_decodes_and_encodes_to_the_same_bytes() {
        // Client id "c1", keep alive 60, clean session, user "u", password "p".
        let bytes: &[u8] = &[
            0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xC2, 0x00, 0x3C, 0x00, 0x02,
            b'c', b'1', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
        ];
        let mut buf = BytesMut::from(bytes);
        let Some(Packet::Connect(connect)) =
            decode(&mut buf, ProtocolVersion::V5, u32::MAX).unwrap()
        else {
            panic!("not a CONNECT");
        };
        assert_eq!(connect.protocol, ProtocolVersion::V3_1_1);
        assert!(connect.clean_start);
        assert_eq!(connect.keep_alive, 60);
        assert_eq!(&*connect.client_id, "c1");
        assert_eq!(connect.username.as_deref(), Some("u"));
        assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
        assert!(buf.is_empty());
        let mut out = BytesMut::new();
        Packet::Connect(connect)
            .encode(ProtocolVersion::V3_1_1, &mut out)
            .unwrap();
        assert_eq!(&out[..], bytes);
    }

    #[test]
    fn qos1_publish_encodes_to_the_exact_wire_bytes() {
        let mut out = BytesMut::new();
        let size =
            publish("a/b", QoS::AtLeastOnce, 10, b"hi").encode(ProtocolVersion::V3_1_1, &mut out);
        assert_eq!(size, Ok(11));
        assert_eq!(
            &out[..],
            &[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i']
        );
        // 5.0 adds an empty property length before the payload.
        out.clear();
        publish("a/b", QoS::AtLeastOnce, 10, b"hi")
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        assert_eq!(
            &out[..],
            &[0x32, 10, 0, 3, b'a', b'/', b'b', 0, 10, 0, b'h', b'i']
        );
    }

    #[test]
    fn partial_packets_wait_for_more_bytes_and_several_decode_in_order() {
        let mut wire = BytesMut::new();
        publish("t", QoS::AtMostOnce, 0, b"one")
            .encode(ProtocolVersion::V5, &mut wire)
            .unwrap();
        Packet::PingReq
            .encode(ProtocolVersion::V5, &mut wire)
            .unwrap();
        let whole = wire.freeze();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(packet) = decode(&mut buf, ProtocolVersion::V5, u32::MAX).unwrap() {
                decoded.push(packet);
            }
        }
        assert_eq!(
            decoded,
            vec![publish("t", QoS::AtMostOnce, 0, b"one"), Packet::PingReq]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn payload_shares_the_read_buffer_instead_of_copying_it() {
        let mut wire = BytesMut::new();
        publish("t", QoS::AtMostOnce, 0, b"payload")
            .encode(ProtocolVersion::V5, &mut wire)
            .unwrap();
        let start = wire.as_ptr() as usize;
        let end = start + wire.len();
        let Some(Packet::Publish(decoded)) =
            decode(&mut wire, ProtocolVersion::V5, u32::MAX).unwrap()
        else {
            panic!("not a PUBLISH");
        };
        let payload_at = decoded.payload.as_ptr() as usize;
        assert!((start..end).contains(&payload_at), "payload was copied");
    }

    #[test]
    fn mqtt_3_1_2_24_oversized_packet_is_refused_from_its_fixed_header() {
        // Only the fixed header of a 1000-byte PUBLISH has arrived.
        let mut buf = BytesMut::from(&[0x30, 0xE5, 0x07][..]);
        let error = decode(&mut buf, ProtocolVersion::V5, 100).unwrap_err();
        assert_eq!(
            error,
            DecodeError::PacketTooLarge {
                size: 1000,
                max: 100
            }
        );
        assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);
    }

    #[test]
    fn a_message_too_large_for_the_peer_is_not_encoded() {
        let mut out = BytesMut::from(&b"kept"[..]);
        let packet = publish("t", QoS::AtMostOnce, 0, &[0; 200]);
        let error = packet
            .encode_within(ProtocolVersion::V5, 100, &mut out)
            .unwrap_err();
        assert!(matches!(
            error,
            EncodeError::PacketTooLarge { max: 100, .. }
        ));
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn v5_disconnect_with_normal_reason_is_two_bytes() {
        let mut out = BytesMut::new();
        Packet::Disconnect(Disconnect::default())
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0xE0, 0x00]);
        out.clear();
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0xE0, 0x01, 0x8E]);
    }

    #[test]
    fn auth_cannot_be_encoded_before_5_0() {
        let mut out = BytesMut::new();
        let error = Packet::Auth(Auth::default()).encode(ProtocolVersion::V3_1_1, &mut out);
        assert!(matches!(
            error,
            Err(EncodeError::UnsupportedInVersion { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn mqtt_3_3_1_2_publish_with_mismatched_packet_id_is_not_encoded() {
        let mut out = BytesMut::new();
        let error = publish("t", QoS::AtLeastOnce, 0, b"").encode(ProtocolVersion::V5, &mut out);
        assert_eq!(error, Err(EncodeError::PacketIdMismatch));
    }
}
