//! PUBLISH (section 3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and
//! PUBCOMP (sections 3.4 to 3.7), which share one shape.

use bytes::Bytes;
use bytestring::ByteString;
use rookery_topic::validate_topic_name;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{AckProperties, PublishProperties};
use crate::reason::{ReasonCode, decode_reason};
use crate::types::{PacketId, PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, Sink, put_length_prefixed, put_string};

const FLAG_RETAIN: u8 = 0x01;
const FLAG_DUP: u8 = 0x08;

/// An application message (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// A redelivery of a message sent before (QoS 1 and 2 only).
    pub dup: bool,
    /// The message's QoS on this hop.
    pub qos: QoS,
    /// Whether the message is, or is to be, retained.
    pub retain: bool,
    /// The topic name; empty in 5.0 when a Topic Alias stands for it.
    pub topic: ByteString,
    /// Present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// 5.0 properties; empty for 3.x.
    pub properties: PublishProperties,
    /// The payload, a slice of the received frame.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        // MQTT-3.3.1-4: both QoS bits set is a Malformed Packet.
        let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let dup = flags & FLAG_DUP != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let topic = reader.string()?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                Some(PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?)
            }
        };
        let properties = if version.is_v5() {
            PublishProperties::decode(reader)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() && version.is_v5() {
            // MQTT-3.3.2-7 ff.: an empty topic name is allowed only with a Topic Alias.
            if properties.topic_alias.is_none() {
                return Err(DecodeError::MissingTopicName);
            }
        } else {
            validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
        }
        Ok(Self {
            dup,
            qos,
            retain: flags & FLAG_RETAIN != 0,
            topic,
            packet_id,
            properties,
            payload: reader.rest(),
        })
    }

    pub(crate) fn flags(&self) -> u8 {
        let mut flags = (self.qos as u8) << 1;
        if self.dup {
            flags |= FLAG_DUP;
        }
        if self.retain {
            flags |= FLAG_RETAIN;
        }
        flags
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        put_string(sink, &self.topic)?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => sink.put_u16(id.get()),
            _ => return Err(EncodeError::PacketIdMismatch),
        }
        if version.is_v5() {
            put_length_prefixed(sink, &self.properties)?;
        }
        sink.put_slice(&self.payload);
        Ok(())
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: which one is the [`crate::Packet`] variant
/// that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: PacketId,
    /// 5.0 outcome; 3.x has none and always means success.
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(
        packet_type: PacketType,
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?;
        let mut ack = Self::new(packet_id);
        // MQTT-3.4.2-1 and its siblings: a remaining length of 2 means Success
        // with no properties; the property length may be left out too.
        if version.is_v5() && !reader.is_empty() {
            ack.reason_code = decode_reason(reader.u8()?, packet_type)?;
            if !reader.is_empty() {
                ack.properties = AckProperties::decode(reader, packet_type)?;
            }
        }
        Ok(ack)
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        sink.put_u16(self.packet_id.get());
        if version.is_v5() {
            let has_properties = !self.properties.is_empty();
            if has_properties || self.reason_code != ReasonCode::Success {
                sink.put_u8(self.reason_code.as_u8());
            }
            if has_properties {
                put_length_prefixed(sink, &self.properties)?;
            }
        }
        Ok(())
    }
}
