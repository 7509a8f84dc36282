//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11).
//!
//! Topic filters are checked here only as UTF-8 strings: an invalid filter is
//! answered per filter (SUBACK 0x8F in 5.0, 0x80 in 3.1.1) by the broker, not
//! by closing the connection, so filter syntax is the topic crate's business.

use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::reason::{ReasonCode, decode_reason};
use crate::types::{
    PacketId, PacketType, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};
use crate::wire::{Reader, Sink, put_length_prefixed, put_string};

const OPTION_NO_LOCAL: u8 = 0x04;
const OPTION_RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter, possibly `$share/{group}/{filter}`.
    pub filter: ByteString,
    /// QoS, no-local, retain-as-published and retain handling.
    pub options: SubscriptionOptions,
}

/// A request to add subscriptions (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Identifies the SUBACK that answers it.
    pub packet_id: PacketId,
    /// At least one filter (MQTT-3.8.3-2).
    pub subscriptions: Vec<Subscription>,
    /// 5.0 properties.
    pub properties: SubscribeProperties,
}

impl Subscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?;
        let properties = if version.is_v5() {
            SubscribeProperties::decode(reader)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !reader.is_empty() {
            let filter = reader.string()?;
            let options = decode_options(reader.u8()?, version)?;
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::EmptySubscribe);
        }
        Ok(Self {
            packet_id,
            subscriptions,
            properties,
        })
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        sink.put_u16(self.packet_id.get());
        if version.is_v5() {
            put_length_prefixed(sink, &self.properties)?;
        }
        for subscription in &self.subscriptions {
            put_string(sink, &subscription.filter)?;
            sink.put_u8(encode_options(&subscription.options, version));
        }
        Ok(())
    }
}

fn decode_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    if !version.is_v5() {
        // MQTT-3.8.3-4 (3.1.1): bits 7 to 2 are reserved and QoS is 0, 1 or 2.
        let qos = QoS::from_bits(byte).ok_or(DecodeError::InvalidSubscriptionOptions(byte))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    // MQTT-3.8.3-5: bits 7 and 6 are reserved.
    if byte & 0xC0 != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_bits(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & OPTION_NO_LOCAL != 0,
        retain_as_published: byte & OPTION_RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn encode_options(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let mut byte = options.qos as u8;
    if version.is_v5() {
        if options.no_local {
            byte |= OPTION_NO_LOCAL;
        }
        if options.retain_as_published {
            byte |= OPTION_RETAIN_AS_PUBLISHED;
        }
        byte |= (options.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
    }
    byte
}

/// The answer to SUBSCRIBE: one reason code per filter, in order (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The identifier of the SUBSCRIBE answered.
    pub packet_id: PacketId,
    /// The granted QoS or the failure, per filter; 3.1.1 sends failures as 0x80.
    pub reason_codes: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?;
        let properties = if version.is_v5() {
            AckProperties::decode(reader, PacketType::SubAck)?
        } else {
            AckProperties::default()
        };
        let mut reason_codes = Vec::with_capacity(reader.remaining());
        while !reader.is_empty() {
            let code = reader.u8()?;
            let reason = if version.is_v5() {
                decode_reason(code, PacketType::SubAck)?
            } else {
                ReasonCode::from_v3_suback(code).ok_or(DecodeError::InvalidReasonCode {
                    packet_type: PacketType::SubAck,
                    code,
                })?
            };
            reason_codes.push(reason);
        }
        Ok(Self {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        sink.put_u16(self.packet_id.get());
        if version.is_v5() {
            put_length_prefixed(sink, &self.properties)?;
        }
        for reason in &self.reason_codes {
            sink.put_u8(if version.is_v5() {
                reason.as_u8()
            } else {
                reason.to_v3_suback()
            });
        }
        Ok(())
    }
}

/// A request to remove subscriptions (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Identifies the UNSUBACK that answers it.
    pub packet_id: PacketId,
    /// At least one filter (MQTT-3.10.3-2).
    pub filters: Vec<ByteString>,
    /// 5.0 properties.
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?;
        let properties = if version.is_v5() {
            UnsubscribeProperties::decode(reader)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !reader.is_empty() {
            filters.push(reader.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::EmptyUnsubscribe);
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn encode_body<S: Sink>(
        &self,
        version: ProtocolVersion,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        sink.put_u16(self.packet_id.get());
        if version.is_v5() {
            put_length_prefixed(sink, &self.properties)?;
        }
        for filter in &self.filters {
            put_string(sink, filter)?;
        }
        Ok(())
    }
}

/// The answer to UNSUBSCRIBE (section 3.11): in 5.0 a reason code per filter,
/// in 3.x only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The identifier of the UNSUBSCRIBE answered.
    pub packet_id: PacketId,
    /// 5.0: one outcome per filter, in order; empty for 3.x.
    pub reason_codes: Vec<ReasonCode>,
    /// 5.0 properties.
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)?;
        let mut ack = Self {
            packet_id,
            reason_codes: Vec::new(),
            properties: AckProperties::default(),
        };
        if version.is_v5() {
            ack.properties = AckProperties::decode(reader, PacketType::UnsubAck)?;
            ack.reason_codes.reserve(reader.remaining());
            while !reader.is_empty() {
                ack.reason_codes
                    .push(decode_reason(reader.u8()?, PacketType::UnsubAck)?);
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
            put_length_prefixed(sink, &self.properties)?;
            for reason in &self.reason_codes {
                sink.put_u8(reason.as_u8());
            }
        }
        Ok(())
    }
}
